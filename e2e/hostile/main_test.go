// Package hostile runs the adversarial scenarios of the whole path as real
// processes: what an audited client or a certificate holder controls must
// not stall, blind or kill tokenwatch.
package hostile

import (
	"os"
	"testing"

	"github.com/tokenwatch/tokenwatch/e2e/internal/harness"
)

var suite harness.Suite

func TestMain(m *testing.M) { os.Exit(suite.Main(m, harness.MainOptions{Leaks: true})) }
