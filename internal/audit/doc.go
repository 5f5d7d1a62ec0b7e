// Package audit is the part of the audit.k8s.io/v1 Event that tokenwatch
// uses, and Decode, which reads one audit log line into it. Keys match
// exactly, as Kubernetes' own decoder reads them, whatever the formatting;
// responseObject, which holds a minted token at the RequestResponse level,
// is never decoded. It is pure: no I/O, no clock.
package audit
