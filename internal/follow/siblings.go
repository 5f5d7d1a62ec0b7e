package follow

import (
	"cmp"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// backupTimeFormat is lumberjack's timestamp in a backup's name.
const backupTimeFormat = "2006-01-02T15-04-05.000"

// sibling is a rotated file next to the live one, as one directory scan saw it.
type sibling struct {
	path     string
	gz       bool
	dev, ino uint64
	size     int64
	key      orderKey
	// named: the order comes from a lumberjack backup's name.
	named bool
}

// orderKey orders siblings from oldest to newest: by the rotation time in a
// lumberjack name, else by modification time (which rename and gzip -k
// keep), then by logrotate's number (a higher number is older).
type orderKey struct {
	t   time.Time
	seq int
}

func (k orderKey) compare(o orderKey) int {
	if c := k.t.Compare(o.t); c != 0 {
		return c
	}
	return cmp.Compare(k.seq, o.seq)
}

// layout knows the live file's name and recognises its siblings.
type layout struct {
	dir, base, stem, ext string
}

func newLayout(path string) layout {
	base := filepath.Base(path)
	ext := filepath.Ext(base)
	return layout{dir: filepath.Dir(path), base: base, stem: base[:len(base)-len(ext)], ext: ext}
}

// parse reports whether name is a sibling, whether it is compressed, and
// its order from the name when the name carries one (ok=false: use mtime).
func (l layout) parse(name string) (isSib, gz bool, k orderKey, fromName bool) {
	if name == l.base || !strings.HasPrefix(name, l.stem) {
		return false, false, k, false
	}
	rest := name
	if strings.HasSuffix(rest, ".gz") {
		gz = true
		rest = strings.TrimSuffix(rest, ".gz")
	}
	if rest == l.base {
		// audit.log.gz: a compressed copy of the live name.
		return true, gz, k, false
	}
	// lumberjack: <stem>-<time><ext>
	if ts, ok := strings.CutPrefix(rest, l.stem+"-"); ok && strings.HasSuffix(ts, l.ext) {
		ts = strings.TrimSuffix(ts, l.ext)
		if t, err := time.Parse(backupTimeFormat, ts); err == nil {
			return true, gz, orderKey{t: t}, true
		}
	}
	// logrotate: <base>.<n>, <base>-<date>, <base>.<anything>
	if suf, ok := strings.CutPrefix(rest, l.base+"."); ok {
		if n, err := strconv.Atoi(suf); err == nil {
			return true, gz, orderKey{seq: -n}, false
		}
		return true, gz, k, false
	}
	if strings.HasPrefix(rest, l.base+"-") {
		return true, gz, k, false
	}
	return false, false, k, false
}

// scan lists the siblings of the live file, oldest first. A missing
// directory is an empty list.
//
// A listing is retried when a listed file is gone by the time it is
// looked at: a backup can be compressed in between (x.log listed, then
// x.log.gz created and x.log removed), and such a listing would show
// neither.
func (l layout) scan() ([]sibling, error) {
	for attempt := 0; ; attempt++ {
		out, consistent, err := l.scanOnce()
		if err != nil || consistent || attempt == 20 {
			return out, err
		}
	}
}

func (l layout) scanOnce() (out []sibling, consistent bool, err error) {
	entries, err := os.ReadDir(l.dir)
	if err != nil {
		if os.IsNotExist(err) {
			return nil, true, nil
		}
		return nil, false, err
	}
	consistent = true
	for _, e := range entries {
		isSib, gz, k, fromName := l.parse(e.Name())
		if !isSib {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			consistent = false // gone since the listing
			continue
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		if !fromName {
			k.t = fi.ModTime()
		}
		dev, ino := devIno(fi)
		out = append(out, sibling{
			path: filepath.Join(l.dir, e.Name()), gz: gz, dev: dev, ino: ino, size: fi.Size(), key: k, named: fromName,
		})
	}
	slices.SortStableFunc(out, func(a, b sibling) int {
		if c := a.key.compare(b.key); c != 0 {
			return c
		}
		// The plain file before its .gz: it is preferred while both exist.
		if a.gz != b.gz {
			if a.gz {
				return 1
			}
			return -1
		}
		return strings.Compare(a.path, b.path)
	})
	return out, consistent, nil
}

// matches reports whether the sibling holds the data named by id: same
// device and inode (and fingerprint), or, for a compressed file or a copy,
// the same fingerprint over id.FPLen bytes.
func (s sibling) matches(id Identity, byFP bool) bool {
	if !s.gz && id.Plain() && s.dev == id.Dev && s.ino == id.Ino {
		if id.FPLen == 0 {
			return true
		}
		sum, ok, err := fingerprintFile(s.path, false, id.FPLen)
		return err == nil && ok && string(sum) == string(id.FP)
	}
	if !byFP && !s.gz {
		return false
	}
	if id.FPLen == 0 || (!s.gz && s.size < int64(id.FPLen)) {
		return false
	}
	sum, ok, err := fingerprintFile(s.path, s.gz, id.FPLen)
	return err == nil && ok && string(sum) == string(id.FP)
}

// find returns the sibling holding id's data, preferring a plain file with
// the same inode, then a plain copy (byFP), then a compressed one.
func find(sibs []sibling, id Identity, byFP bool) (sibling, bool) {
	for _, s := range sibs {
		if !s.gz && id.Plain() && s.dev == id.Dev && s.ino == id.Ino && s.matches(id, false) {
			return s, true
		}
	}
	for i := len(sibs) - 1; i >= 0; i-- { // newest first: a copytruncate copy is recent
		if s := sibs[i]; !s.gz && byFP && s.matches(id, true) {
			return s, true
		}
	}
	for _, s := range sibs {
		if s.gz && s.matches(id, byFP) {
			return s, true
		}
	}
	return sibling{}, false
}
