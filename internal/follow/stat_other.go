//go:build !unix

package follow

import "os"

// devIno returns zeros: identities rest on fingerprints alone here.
func devIno(fi os.FileInfo) (dev, ino uint64) { return 0, 0 }
