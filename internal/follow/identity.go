package follow

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
)

// FPMax is the number of leading bytes a fingerprint covers once the file
// is at least that long.
const FPMax = 1024

// Identity identifies a file's data independently of its name. Dev and Ino
// are the device and inode of a plain file; they are zero for a compressed
// file, whose data is identified by the fingerprint alone. FP is the SHA-256
// of the first FPLen bytes of the (decompressed) data.
type Identity struct {
	Dev, Ino uint64
	FP       []byte
	FPLen    int
}

// Plain reports whether id was taken of an uncompressed file.
func (id Identity) Plain() bool { return id.Ino != 0 }

// Same reports whether id and other name the same data. Two plain
// identities match by device and inode, and by fingerprint when both were
// taken over the same length (an inode reused by a new file, or a file
// truncated and rewritten, then differs). Otherwise, as between a plain
// file and its later .gz, the fingerprints must have been taken over the
// same non-zero length and be equal. The follower itself matches files
// against an identity by hashing the file over the identity's FPLen, so
// lengths always agree there.
func (id Identity) Same(other Identity) bool {
	if id.Plain() && other.Plain() {
		if id.Dev != other.Dev || id.Ino != other.Ino {
			return false
		}
		return id.FPLen != other.FPLen || bytes.Equal(id.FP, other.FP)
	}
	return id.FPLen > 0 && id.FPLen == other.FPLen && bytes.Equal(id.FP, other.FP)
}

// String formats id for logs.
func (id Identity) String() string {
	fp := id.FP
	if len(fp) > 8 {
		fp = fp[:8]
	}
	return fmt.Sprintf("dev=%d ino=%d fp=%x/%d", id.Dev, id.Ino, fp, id.FPLen)
}

// hashPrefix hashes exactly n bytes read from r; ok is false when r holds
// fewer than n bytes.
func hashPrefix(r io.Reader, n int) (sum []byte, ok bool, err error) {
	h := sha256.New()
	got, err := io.CopyN(h, r, int64(n))
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	if got != int64(n) {
		return nil, false, nil
	}
	return h.Sum(nil), true, nil
}

// fingerprintFile hashes the first n bytes of the data in the file at
// path, decompressing it when gz is set. ok is false when the data is
// shorter than n (or, for a gzip stream still being written, unreadable).
func fingerprintFile(path string, gz bool, n int) (sum []byte, ok bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	if !gz {
		return hashPrefix(io.NewSectionReader(f, 0, int64(n)), n)
	}
	zr, err := gzip.NewReader(f)
	if err != nil {
		// A gzip file being written may not have a header yet.
		return nil, false, nil
	}
	defer zr.Close()
	sum, ok, err = hashPrefix(zr, n)
	if err != nil {
		return nil, false, nil
	}
	return sum, ok, nil
}

// fingerprintHandle hashes bytes [0, n) of an open plain file.
func fingerprintHandle(f *os.File, n int) ([]byte, bool, error) {
	return hashPrefix(io.NewSectionReader(f, 0, int64(n)), n)
}
