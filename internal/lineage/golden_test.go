package lineage

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/audit"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// scenario runs one of each lineage record and returns them in order.
func scenario(t *testing.T, s *State) []alert.Record {
	t.Helper()
	var recs []alert.Record
	add := func(fx Effects) { recs = append(recs, fx.Records...) }
	m := mintEvent("6f1c2a4e-0d7b-4f5e-9a1b-3c2d1e0f9a8b", "alice", "198.51.100.7", at(0))
	add(mustMint(t, s, at(0), src1, m))
	// token_use: first use, then from another cluster reading secrets.
	u := useEvent("6f1c2a4e-0d7b-4f5e-9a1b-3c2d1e0f9a8b", saBuilder, "198.51.100.7", at(1), "list", "pods", "", "team-a")
	u.AuditID = "0c0a6a8e-1111-4e0e-8a9e-000000000001"
	add(s.Use(at(1), src1, u, nil, false))
	e := useEvent("6f1c2a4e-0d7b-4f5e-9a1b-3c2d1e0f9a8b", saBuilder, "203.0.113.9", at(2), "get", "secrets", "", "kube-system")
	e.ObjectRef.Name = "admin-token"
	e.AuditID = "0c0a6a8e-1111-4e0e-8a9e-000000000002"
	e.RequestURI = "/api/v1/namespaces/kube-system/secrets/admin-token"
	add(s.Use(at(2), src2, e, []Kind{KindToken}, true))
	// actor_followup: alice creates a clusterrolebinding.
	f := useEvent("", "alice", "198.51.100.7", at(3), "create", "clusterrolebindings", "", "")
	f.ObjectRef.APIGroup = "rbac.authorization.k8s.io"
	f.AuditID = "0c0a6a8e-1111-4e0e-8a9e-000000000003"
	f.RequestURI = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
	f.ResponseStatus = &audit.Status{Code: 403}
	add(s.Use(at(3), src1, f, []Kind{KindActorUser}, false))
	// legacy_token_use.
	l := useEvent("", "system:serviceaccount:ci:deployer", "192.0.2.44", at(4), "get", "secrets", "", "ci")
	l.Annotations = map[string]string{AnnotationLegacyToken: "system:serviceaccount:ci:deployer"}
	l.ResponseStatus = &audit.Status{Code: 401}
	l.AuditID = "0c0a6a8e-1111-4e0e-8a9e-000000000004"
	add(s.Use(at(4), src1, l, []Kind{KindLegacy}, false))
	add(s.Count(at(5), src1, Count{Kind: KindLegacy, Key: "system:serviceaccount:ci:deployer", Uses: 2,
		Verbs: map[string]uint64{"get secrets ci": 2}, Codes: map[string]uint64{"200": 2}, SourceIPs: []string{"192.0.2.44"}}))
	// lineage_watch_full: three more mints by mallory over a limit of 3.
	for i, j := range []string{"m-1", "m-2", "m-3"} {
		add(mustMint(t, s, at(6+float64(i)), src1, mintEvent(j, "mallory", "192.0.2.66", at(6+float64(i)))))
	}
	// token_use_summary and the rest at the interval's end.
	add(s.Tick(at(10)))
	return recs
}

func TestGoldenRecords(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxWatched = 3
	recs := scenario(t, New(cfg, Hooks{}))
	var buf bytes.Buffer
	for _, r := range recs {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		buf.Write(b)
		buf.WriteByte('\n')
	}
	path := filepath.Join("testdata", "records.golden.jsonl")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), buf.String()); diff != "" {
		t.Errorf("records differ from %s (-want +got):\n%s", path, diff)
	}
	seen := map[string]bool{}
	for _, r := range recs {
		if seen[r.ID] {
			t.Errorf("record ID %s twice", r.ID)
		}
		seen[r.ID] = true
	}
	if got := eventNames(recs); !cmp.Equal(got, []string{EventActorFollowup, EventLegacyTokenUse, alert.EventPipeline,
		EventTokenUse, EventTokenUse, EventTokenUseSummary}) {
		t.Errorf("record kinds %v", got)
	}
}

// TestGoldenStable: the same inputs give the same record IDs (the outbox
// key) on a retry from the same stored state.
func TestGoldenStable(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxWatched = 3
	a, b := scenario(t, New(cfg, Hooks{})), scenario(t, New(cfg, Hooks{}))
	if diff := cmp.Diff(a, b); diff != "" {
		t.Errorf("two runs differ:\n%s", diff)
	}
}
