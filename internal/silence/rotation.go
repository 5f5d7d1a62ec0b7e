package silence

import (
	"fmt"
	"strconv"
	"time"

	"github.com/tokenwatch/tokenwatch/internal/alert"
	"github.com/tokenwatch/tokenwatch/internal/audit"
)

// KindAuditLogRotationSmall is the tokenwatch.pipeline.kind of the record
// that reports that a node's kube-apiserver rotates its audit log below the
// largest token request event: its log writer refuses a longer event, so a
// client can pad a TokenRequest out of the log.
const KindAuditLogRotationSmall = "audit_log_rotation_small"

// heardRotation takes what a heartbeat says of the audit log's rotation
// size; 0 (unknown) leaves what was known.
func (s *state) heardRotation(size int64) {
	if size > 0 {
		s.rotation = size
	}
}

// rotationRecords returns, for the nodes of keys in their order, an
// audit_log_rotation_small record for each whose audit log now rotates
// below audit.LargestTokenEvent at another size than last reported: at
// once for the first, later ones once After has passed since the last (a
// misbehaving agent cannot flood the outbox). A size at or above it is
// noted without a record, so that a later fall is reported again.
func (t *Tracker) rotationRecords(now time.Time, keys []node) []alert.Record {
	var out []alert.Record
	for _, k := range keys {
		s := t.nodes[k]
		switch {
		case s.rotation == 0 || s.rotation == s.rotationRep:
		case s.rotation >= audit.LargestTokenEvent:
			s.rotationRep = s.rotation
		case !s.rotationAt.IsZero() && now.Sub(s.rotationAt) < t.cfg.After:
		default:
			out = append(out, rotationRecord(k, s.rotation, now))
			s.rotationRep, s.rotationAt = s.rotation, now
		}
	}
	return out
}

func rotationRecord(k node, size int64, now time.Time) alert.Record {
	mb := strconv.FormatInt(size>>20, 10)
	return alert.Record{
		ID: alert.PipelineID(KindAuditLogRotationSmall + "\x00" + k.cluster + "\x00" + k.name + "\x00" +
			mb + "\x00" + now.UTC().Format(time.RFC3339Nano)),
		EventName: alert.EventPipeline,
		Time:      now,
		Severity:  alert.High,
		Body: fmt.Sprintf("kube-apiserver on node %s of cluster %s rotates its audit log at %s MiB (--audit-log-maxsize=%s, "+
			"as its newest rotation shows). It drops an event longer than that, and a TokenRequest padded to the apiserver's "+
			"request limit makes one of up to %d MiB: such a request is seen at most by its RequestReceived stage, without its "+
			"outcome, its audiences or the minted token's ID (so the token's uses cannot be traced to it), and not at all when "+
			"the audit policy omits that stage. Set --audit-log-maxsize to at least %d.",
			k.name, k.cluster, mb, mb, audit.LargestTokenEvent>>20, audit.LargestTokenEvent>>20),
		Attrs: []alert.Attr{
			alert.String("tokenwatch.pipeline.kind", KindAuditLogRotationSmall),
			alert.String("k8s.cluster.name", k.cluster),
			alert.String("k8s.node.name", k.name),
			alert.Int("tokenwatch.audit_log.rotation_bytes", size),
			alert.Int("tokenwatch.audit_log.largest_token_event_bytes", audit.LargestTokenEvent),
		},
	}
}
