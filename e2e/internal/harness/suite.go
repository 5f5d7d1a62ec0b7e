package harness

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// Suite is what one e2e test package shares: TestMain builds the binaries
// once with Main, and each test asks for them with Need, which fails the
// test (never skips it) when they did not build.
type Suite struct {
	bins *Binaries
	err  error
}

// MainOptions tune Suite.Main.
type MainOptions struct {
	// Leaks checks, after passing tests, that no goroutine was left behind.
	Leaks bool
	// Setup runs after a successful build, with the binaries' directory
	// (for extra tools a package needs); its error is reported like a
	// build error.
	Setup func(dir string) error
}

// Main is the body of a test package's TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(suite.Main(m, harness.MainOptions{Leaks: true})) }
func (s *Suite) Main(m *testing.M, o MainOptions) int {
	dir, err := os.MkdirTemp("", "tokenwatch-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	s.bins, s.err = Build(dir)
	if s.err == nil && o.Setup != nil {
		s.err = o.Setup(dir)
	}
	if s.err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", s.err)
	}
	code := m.Run()
	if code == 0 && o.Leaks {
		if err := goleak.Find(GoleakOptions()...); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	return code
}

// Need returns the binaries, failing t when they did not build.
func (s *Suite) Need(t testing.TB) *Binaries {
	t.Helper()
	return Need(t, s.bins, s.err)
}
