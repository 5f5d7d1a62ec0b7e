package lineage

import (
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/detect"
)

// Event names of lineage records.
const (
	EventTokenUse        = "tokenwatch.token_use"
	EventTokenUseSummary = "tokenwatch.token_use_summary"
	EventActorFollowup   = "tokenwatch.actor_followup"
	EventLegacyTokenUse  = "tokenwatch.legacy_token_use"
)

// Reasons of a token_use record (tokenwatch.lineage.reasons).
const (
	ReasonFirstUse        = "first_use"
	ReasonSourceIPDiffers = "source_ip_differs_from_mint"
	ReasonNewSourceIP     = "new_source_ip"
	ReasonOtherCluster    = "other_cluster"
	ReasonSensitiveAction = "sensitive_action"
)

// Pipeline record kind of a dropped watch (tokenwatch.pipeline.kind).
const PipelineWatchFull = "lineage_watch_full"

// Kind says what a watch, a matched request or a count is about. The
// values mirror the wire's LineageKind.
type Kind string

// Kinds.
const (
	// KindToken: requests authenticated with a watched token, by JTI.
	KindToken Kind = "token"
	// KindActorUser: a minter followed by user name.
	KindActorUser Kind = "actor_user"
	// KindActorCredential: a service-account minter followed by the JTI of
	// the credential it minted with.
	KindActorCredential Kind = "actor_credential"
	// KindLegacy: requests authenticated with a legacy Secret-based token.
	// Never a watch.
	KindLegacy Kind = "legacy_token"
)

// Source is where a request was read: the agent's cluster and node.
type Source = detect.Source

// Watch is one watched token or minter, as pushed to agents: requests whose
// requestReceivedTimestamp lies in [From, Until] count.
type Watch struct {
	Kind  Kind
	Key   string // the JTI (token, actor_credential) or user name (actor_user)
	From  time.Time
	Until time.Time
}

// Effects is what an operation produced: records to commit and the
// changes to push to the agents' watch sets. Remove carries Kind and Key.
type Effects struct {
	Records []alert.Record
	Add     []Watch
	Remove  []Watch
}

// Mint is an alerting token request that minted a token (MintOf): the
// token it issued and who minted it, where, when and for which service
// account.
type Mint struct {
	JTI       string    `json:"jti"`
	AuditID   string    `json:"audit_id"`
	Cluster   string    `json:"cluster"`
	User      string    `json:"user"`
	SourceIP  string    `json:"source_ip,omitempty"`
	Time      time.Time `json:"time"` // requestReceivedTimestamp
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	// Credential is the JTI of the token the minter authenticated with
	// (CredentialJTI), "" when it used no bound token.
	Credential string `json:"credential,omitempty"`
	// Until and Capped are TTL's: the token is watched in [Time, Until].
	Until  time.Time `json:"until"`
	Capped bool      `json:"capped,omitempty"`
}

// Count counts requests an agent matched and did not send one by one
// (the wire's UseCount).
type Count struct {
	Kind Kind   // KindToken or KindLegacy
	Key  string // the JTI, or "system:serviceaccount:<ns>:<name>" for KindLegacy
	Uses uint64
	// Verbs counts by VerbKey, Codes by CodeKey.
	Verbs       map[string]uint64
	SourceIPs   []string
	Codes       map[string]uint64
	First, Last time.Time
	User        string // user.username of the requests (the last seen)
}

// Hooks are the caller's decisions lineage asks about. They follow the
// exclusions, which a reload may change. A nil func answers false.
type Hooks struct {
	// SkipActor reports whether a minter named user (a system:* name) is
	// one an exclusion would have excluded: it is not followed.
	SkipActor func(user string) bool
	// SkipLegacy reports whether the legacy-token service account
	// ("system:serviceaccount:<ns>:<name>") of cluster is matched by an
	// explicit exclusions.add entry: its uses are not reported.
	SkipLegacy func(cluster, serviceAccount string) bool
}

// Chain is the lineage of a token request authenticated with a watched
// token.
type Chain struct {
	// ParentJTI is the watched token the request authenticated with.
	ParentJTI string
	// RootUser is the first minter of the chain that did not use a token.
	RootUser string
	// Depth is 1 for a token minted with a root-minted token, +1 per hop.
	Depth int
}
