//go:build unix

package follow

import (
	"os"
	"syscall"
)

// devIno returns the device and inode of fi, or zeros where unknown.
func devIno(fi os.FileInfo) (dev, ino uint64) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0
	}
	return uint64(st.Dev), uint64(st.Ino) //nolint:unconvert // types differ by platform
}
