// Package version holds the build version of the tokenwatch binaries.
package version

// Version is set at link time with -ldflags "-X github.com/tokenwatch/tokenwatch/internal/version.Version=...".
var Version = "0.1.0-dev"
