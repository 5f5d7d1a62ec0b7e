package follow

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// ReplayFiles lists the files that paths name, files or directories (every
// regular file in a directory, hidden ones aside), in log order, oldest
// first, for an investigation replay. The rules are the follower's for
// siblings: a lumberjack backup (<stem>-<time><ext>[.gz]) is ordered by the
// time in its name, a logrotate backup (<base>.<n>[.gz]) by modification
// time then number, another name that is a sibling of a given file
// (<base>.*, <base>-*) by modification time; a file that is none of these
// is a live log and comes last. A file named twice (or through a link) is
// listed once, and a compressed copy is left out when its plain file is
// listed (the follower prefers the plain file too).
func ReplayFiles(paths []string) ([]string, error) {
	var files []string
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		if !fi.IsDir() {
			files = append(files, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return nil, err
		}
		n := len(files)
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), ".") && e.Type().IsRegular() {
				files = append(files, filepath.Join(p, e.Name()))
			}
		}
		if len(files) == n {
			return nil, fmt.Errorf("%s: no files to replay", p)
		}
	}
	return orderReplay(files)
}

// replayFile is a file to replay with its place in log order.
type replayFile struct {
	path string
	gz   bool
	live bool
	key  orderKey
}

func orderReplay(paths []string) ([]string, error) {
	type ino struct{ dev, ino uint64 }
	seen := map[ino]bool{}
	listed := map[string]bool{} // absolute paths
	var files []replayFile
	for _, p := range paths {
		abs, err := filepath.Abs(p)
		if err != nil {
			return nil, err
		}
		fi, err := os.Stat(abs)
		if err != nil {
			return nil, err
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("%s: not a regular file", p)
		}
		dev, n := devIno(fi)
		if seen[ino{dev, n}] {
			continue
		}
		seen[ino{dev, n}] = true
		listed[abs] = true
		k := orderKey{t: fi.ModTime()}
		files = append(files, replayFile{path: abs, gz: strings.HasSuffix(abs, ".gz"), key: k})
	}
	out := files[:0]
	for _, f := range files {
		if f.gz && listed[strings.TrimSuffix(f.path, ".gz")] {
			continue // a compressed copy of a listed plain file
		}
		f.live, f.key = replayPlace(f, listed)
		out = append(out, f)
	}
	slices.SortStableFunc(out, func(a, b replayFile) int {
		if a.live != b.live {
			if a.live {
				return 1
			}
			return -1
		}
		if c := a.key.compare(b.key); c != 0 {
			return c
		}
		return strings.Compare(a.path, b.path)
	})
	list := make([]string, len(out))
	for i, f := range out {
		list[i] = f.path
	}
	return list, nil
}

// replayPlace says whether f is a live log and its order key among
// rotated files (f.key holds its modification time).
func replayPlace(f replayFile, listed map[string]bool) (live bool, k orderKey) {
	dir, name := filepath.Split(f.path)
	rest := strings.TrimSuffix(name, ".gz")
	ext := filepath.Ext(rest)
	// lumberjack: <stem>-<time><ext>, the time from the name
	if st := strings.TrimSuffix(rest, ext); len(st) > len(backupTimeFormat) && st[len(st)-len(backupTimeFormat)-1] == '-' {
		base := st[:len(st)-len(backupTimeFormat)-1] + ext
		if isSib, _, nk, fromName := newLayout(filepath.Join(dir, base)).parse(name); isSib && fromName {
			return false, nk
		}
	}
	// logrotate: <base>.<n>
	if _, err := strconv.Atoi(strings.TrimPrefix(ext, ".")); err == nil && ext != "" {
		if isSib, _, nk, _ := newLayout(filepath.Join(dir, strings.TrimSuffix(rest, ext))).parse(name); isSib {
			nk.t = f.key.t
			return false, nk
		}
	}
	// another sibling of a listed file
	for p := range listed {
		if p == f.path || filepath.Dir(p) != filepath.Clean(dir) {
			continue
		}
		if isSib, _, _, _ := newLayout(p).parse(name); isSib {
			return false, f.key
		}
	}
	return true, f.key
}

// Replay reads files one after another, each to its end as a Follower with
// Once reads its file, for an investigation replay (ReplayFiles gives the
// order). Its Stats are those of the file being read, with the counts of
// the files before it added (Rotations: the files read to their end).
type Replay struct {
	cfg   Config
	files []string

	mu   sync.Mutex
	cur  *Follower
	prev Stats // totals of the files read
}

// NewReplay checks cfg (its Path is ignored: each file is one) and files.
func NewReplay(cfg Config, files []string) (*Replay, error) {
	if len(files) == 0 {
		return nil, errors.New("follow: no files to replay")
	}
	cfg.Once, cfg.Resume = true, nil
	for _, f := range files {
		c := cfg
		c.Path = f
		if err := c.Validate(); err != nil {
			return nil, err
		}
	}
	return &Replay{cfg: cfg, files: files}, nil
}

// Run reads every file in turn, returning at the first error, or nil when
// the last is read to its end.
func (r *Replay) Run(ctx context.Context, h Handler) error {
	for _, path := range r.files {
		c := r.cfg
		c.Path = path
		f, err := New(c)
		if err != nil {
			return err
		}
		r.mu.Lock()
		r.cur = f
		r.mu.Unlock()
		if err := f.Run(ctx, h); err != nil {
			return err
		}
		st := f.Stats()
		r.mu.Lock()
		r.prev.Lines += st.Lines
		r.prev.Bytes += st.Bytes
		r.prev.LinesTooLong += st.LinesTooLong
		r.prev.Losses += st.Losses
		r.prev.Rotations++
		r.prev.File, r.prev.Offset, r.prev.Size, r.prev.LastGrowth = st.File, st.Offset, st.Size, st.LastGrowth
		r.cur = nil // its counts are in prev now
		r.mu.Unlock()
	}
	return nil
}

// Stats returns a snapshot; it is safe to call while Run runs.
func (r *Replay) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	var st Stats
	if r.cur != nil {
		st = r.cur.Stats()
	}
	if r.cur == nil {
		st.File, st.Offset, st.Size, st.LastGrowth = r.prev.File, r.prev.Offset, r.prev.Size, r.prev.LastGrowth
	}
	st.Lines += r.prev.Lines
	st.Bytes += r.prev.Bytes
	st.LinesTooLong += r.prev.LinesTooLong
	st.Losses += r.prev.Losses
	st.Rotations += r.prev.Rotations
	return st
}
