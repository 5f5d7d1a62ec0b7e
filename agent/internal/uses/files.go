package uses

import (
	"encoding/hex"
	"fmt"
	"os"

	"github.com/tokenwatch/tokenwatch/internal/follow"
)

// file is a file read within the lookback window, held open to read its
// lines again.
type file struct {
	f     *os.File // a duplicate of the follower's handle; nil when none could be had
	name  string   // when read
	gz    bool     // f holds gzip data; offsets are in the decompressed data
	err   string   // why f is nil
	fp    []byte   // the file's fingerprint when last read (SourcePosition)
	fpLen int
	last  uint64 // sequence number of the newest index entry in it
	jobs  int    // lookback searches that will read it
}

// files numbers the files read (linematch.Location.File) and holds them
// open while the index or a search refers to them.
type files struct {
	byNo    map[uint32]*file
	byKey   map[string]uint32
	next    uint32
	cur     uint32 // the file of the last block
	curKey  string
	hasCur  bool
	opened  uint64 // handles duplicated, ever
	dupFail uint64
}

func newFiles() *files {
	return &files{byNo: map[uint32]*file{}, byKey: map[string]uint32{}, next: 1}
}

// fileKey identifies a block's file: a plain file by device and inode (its
// name changes on rotation), a compressed one by its fingerprint and name.
func fileKey(b follow.Block) string {
	if b.Compressed || (b.Pos.ID.Dev == 0 && b.Pos.ID.Ino == 0) {
		return "gz " + hex.EncodeToString(b.Pos.ID.FP) + " " + b.Pos.Name
	}
	return fmt.Sprintf("plain %d:%d", b.Pos.ID.Dev, b.Pos.ID.Ino)
}

// of returns the number of b's file, duplicating its handle the first time.
func (fs *files) of(b follow.Block) uint32 {
	key := fileKey(b)
	if fs.hasCur && key == fs.curKey {
		if f := fs.byNo[fs.cur]; f != nil {
			f.name = b.Pos.Name
			return fs.cur
		}
	}
	no, ok := fs.byKey[key]
	if !ok {
		no = fs.next
		fs.next++
		f := &file{name: b.Pos.Name, gz: b.Compressed}
		switch h, err := dupOf(b.File); {
		case err != nil:
			f.err = err.Error()
			fs.dupFail++
		default:
			f.f = h
			fs.opened++
		}
		fs.byNo[no] = f
		fs.byKey[key] = no
	}
	fs.byNo[no].name = b.Pos.Name
	fs.cur, fs.curKey, fs.hasCur = no, key, true
	return no
}

func dupOf(f *os.File) (*os.File, error) {
	if f == nil {
		return nil, fmt.Errorf("no open file")
	}
	return dup(f)
}

// release closes the files no index entry (numbered from first) and no
// search refers to, the current one aside.
func (fs *files) release(first uint64) {
	for no, f := range fs.byNo {
		if f.last >= first || f.jobs > 0 || (fs.hasCur && no == fs.cur) {
			continue
		}
		fs.drop(no)
	}
}

func (fs *files) drop(no uint32) {
	f := fs.byNo[no]
	if f == nil {
		return
	}
	if f.f != nil {
		f.f.Close()
	}
	delete(fs.byNo, no)
	for k, n := range fs.byKey {
		if n == no {
			delete(fs.byKey, k)
		}
	}
	if fs.hasCur && fs.cur == no {
		fs.hasCur = false
	}
}

// closeAll closes every file but those a search still reads.
func (fs *files) closeAll() {
	fs.hasCur = false
	for no, f := range fs.byNo {
		if f.jobs == 0 {
			fs.drop(no)
		}
	}
}

// open returns the number of files held open.
func (fs *files) open() int {
	n := 0
	for _, f := range fs.byNo {
		if f.f != nil {
			n++
		}
	}
	return n
}
