package check

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run when a test leaves a goroutine behind (process
// waiters, the OTLP sink, HTTP clients).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
