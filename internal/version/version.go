// Package version holds the build identity of the tokenwatch binaries: the
// version, the commit and the Go version, as --version prints them and the
// tokenwatch_build_info metric labels them.
package version

import (
	"fmt"
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	commonversion "github.com/prometheus/common/version"
)

// Version is set at link time with -ldflags "-X github.com/tokenwatch/tokenwatch/internal/version.Version=...".
var Version = "0.1.0-dev"

// Commit returns the commit the binary was built from. It is the one set at
// link time with -ldflags "-X github.com/prometheus/common/version.Revision=...",
// else the vcs.revision that go build records inside a git checkout (with
// "-modified" when the tree had uncommitted changes), else "unknown" (built
// with -buildvcs=false, or a test binary). Prometheus' own version package
// decides, so the metric and --version agree.
func Commit() string { return commonversion.GetRevision() }

// String is the line --version prints, such as
// "tokenwatch agent 0.1.0 (commit 3f2a9c1..., go1.26.0)".
func String(program string) string {
	return fmt.Sprintf("tokenwatch %s %s (commit %s, %s)", program, Version, Commit(), runtime.Version())
}

// NewCollector returns the gauge tokenwatch_build_info, always 1, labelled
// with program, version, revision (the commit) and goversion, and the rest
// of Prometheus' build-info convention (branch, goos, goarch, tags).
func NewCollector(program string) prometheus.Collector {
	return versioncollector.NewCollector("tokenwatch", versioncollector.WithExtraConstLabels(prometheus.Labels{
		"program": program,
		"version": Version,
	}))
}
