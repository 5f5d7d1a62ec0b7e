package follow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for Config.
const (
	DefaultMaxLine   = 16 << 20
	DefaultBlockSize = 1 << 20
	DefaultPoll      = 250 * time.Millisecond
)

// StartAt values.
const (
	StartBeginning = "beginning"
	StartEnd       = "end"
)

// Loss reasons.
const (
	// ReasonLineTooLong: a line longer than Config.MaxLine was skipped.
	ReasonLineTooLong = "line_too_long"
	// ReasonRotatedFileGone: a rotated file was deleted before it was read
	// (to its end).
	ReasonRotatedFileGone = "rotated_file_gone"
	// ReasonIncompleteLine: a finished file ended without a newline.
	ReasonIncompleteLine = "incomplete_line"
	// ReasonFileTruncated: the live file was truncated in place and no copy
	// of the data not yet read was found.
	ReasonFileTruncated = "file_truncated"
	// ReasonUnreadable: a rotated file could not be read (e.g. corrupt gzip).
	ReasonUnreadable = "unreadable_file"
	// ReasonCheckpointMissing: a checkpoint was kept before and is gone
	// (Config.CheckpointLost); what StartAt skipped was not read.
	ReasonCheckpointMissing = "checkpoint_missing"
)

// rotateGrace bounds how long a file renamed away is still watched for
// late writes when the new live file stays empty (a writer that reopens
// its file only on a signal, as with logrotate's create mode). lumberjack
// needs none: it closes the file before renaming it.
const rotateGrace = 2 * time.Second

// Position is a place in an identified file.
type Position struct {
	ID     Identity
	Name   string // file name when last seen
	Offset int64  // next byte to read
}

// Block is a run of whole lines read from one file.
type Block struct {
	Pos  Position // position of Data[0]
	Data []byte   // whole lines, each ending in '\n'; valid only until the handler returns
	// File is the open file Data was read from, valid only until the
	// handler returns: a handler that reads the lines again later (by
	// offset, whatever the file is renamed to or whether it is deleted)
	// duplicates it. When Compressed, File holds gzip data and Pos
	// offsets are in its decompressed data. Nil when unknown.
	File       *os.File
	Compressed bool
}

// End returns the position just after the block.
func (b Block) End() Position {
	return Position{ID: b.Pos.ID, Name: b.Pos.Name, Offset: b.Pos.Offset + int64(len(b.Data))}
}

// Loss reports data that could not be delivered. Bytes without BytesKnown
// is a lower bound (0 when nothing is known), likewise Lines.
type Loss struct {
	Reason, File           string
	Offset, Bytes, Lines   int64
	BytesKnown, LinesKnown bool
	Detail                 string
	// Whole: for ReasonLineTooLong, the whole line went to LongLine.
	Whole bool
}

// Handler receives blocks and losses in file order, from Run's goroutine.
type Handler interface {
	Block(ctx context.Context, b Block) error // an error stops Run and is returned
	Loss(ctx context.Context, l Loss) error
}

// LongLineHandler is a Handler that also sees the lines longer than
// MaxLine, which are otherwise skipped: LongLine receives the bytes of such
// a line in order, in pieces valid only during the call, start true on the
// line's first piece. The Loss reporting the line (ReasonLineTooLong)
// follows, with Whole true when every byte of the line up to its newline
// went to LongLine.
type LongLineHandler interface {
	Handler
	LongLine(ctx context.Context, piece []byte, start bool) error
}

// Config configures a Follower.
type Config struct {
	Path      string
	StartAt   string    // "beginning" | "end" (default), without a checkpoint
	Resume    *Position // checkpoint; wins over StartAt
	Once      bool      // read to the end of the live file (plain or .gz) and return nil
	MaxLine   int       // longest line delivered, without its newline; default 16 MiB
	BlockSize int       // read size; default 1 MiB
	Poll      time.Duration
	Logger    *slog.Logger

	// CheckpointLost: there is no Resume because a checkpoint kept before
	// is gone. What StartAt then skips (the live file before the end, and
	// the siblings taken for history) is reported as a
	// ReasonCheckpointMissing loss.
	CheckpointLost bool
}

// Validate reports the first invalid field.
func (c Config) Validate() error {
	if c.Path == "" {
		return errors.New("follow: Path is empty")
	}
	switch c.StartAt {
	case "", StartBeginning, StartEnd:
	default:
		return fmt.Errorf("follow: StartAt %q: want %q or %q", c.StartAt, StartBeginning, StartEnd)
	}
	if c.MaxLine < 0 || c.BlockSize < 0 || c.Poll < 0 {
		return errors.New("follow: MaxLine, BlockSize and Poll must not be negative")
	}
	if !c.Once && strings.HasSuffix(c.Path, ".gz") {
		return fmt.Errorf("follow: %s is compressed: it can only be read with Once", c.Path)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.StartAt == "" {
		c.StartAt = StartEnd
	}
	if c.MaxLine == 0 {
		c.MaxLine = DefaultMaxLine
	}
	if c.BlockSize == 0 {
		c.BlockSize = DefaultBlockSize
	}
	if c.BlockSize > c.MaxLine+1 {
		c.BlockSize = c.MaxLine + 1
	}
	if c.Poll == 0 {
		c.Poll = DefaultPoll
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// Stats is a snapshot of what a Follower has done.
type Stats struct {
	Lines        int64 // lines delivered
	Bytes        int64 // bytes delivered
	Rotations    int64 // rotated (or truncated) files read to their end and left
	LinesTooLong int64
	Losses       int64 // Loss reports
	File         string
	Offset       int64     // next byte to deliver in File
	Size         int64     // File's size when last seen
	Behind       int64     // bytes not yet delivered: rest of File (plain) and newer rotated files (as stored)
	LastGrowth   time.Time // when data was last read
	// Live is the state of the live file at Path when last looked at
	// ("" before the first look, and with Once); LiveErr says why it is
	// absent or unreadable.
	Live    LiveState
	LiveErr string
}

// LiveState is the state of the live file at Config.Path.
type LiveState string

// Live file states.
const (
	LivePresent    LiveState = "present"
	LiveAbsent     LiveState = "absent"     // no file (or no folder) at Path
	LiveUnreadable LiveState = "unreadable" // there, but it cannot be opened or examined
)

// Follower follows one audit log and its rotations. Use New.
type Follower struct {
	cfg     Config
	lay     layout
	log     *slog.Logger
	running atomic.Bool

	mu    sync.Mutex
	stats Stats

	// Run's own state.
	buf          []byte
	n            int // valid bytes in buf; buf[0] is at cur.off
	skipping     bool
	skipFrom     int64
	skipBytes    int64
	floor        orderKey // siblings at or below it are read or history
	hasFloor     bool
	done         []Identity       // files read to their end, newest last
	pending      map[string]entry // newer siblings seen but not read yet
	seen         []seenFile       // files seen at the live name while another was read
	lastScan     time.Time
	lastWarn     string
	pendingBytes int64         // size of the newer siblings not read yet
	rotateGrace  time.Duration // see the rotateGrace constant
	started      chan struct{} // tests: closed once the first file is chosen
}

// entry is a sibling waiting to be read, remembered to notice if it vanishes.
type entry struct {
	sib sibling
	id  Identity
}

// seenFile is a file seen at the live name while the follower read an
// older one: remembered until it is listed as a sibling or read, so that
// one rotated away and deleted before any listing saw it is still noticed.
type seenFile struct {
	id   Identity
	size int64 // when last seen
}

// New checks cfg and returns a Follower.
func New(cfg Config) (*Follower, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	abs, err := filepath.Abs(cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("follow %s: %w", cfg.Path, err)
	}
	cfg.Path = abs
	return &Follower{
		cfg:         cfg,
		lay:         newLayout(abs),
		log:         cfg.Logger.With("file", abs),
		pending:     map[string]entry{},
		rotateGrace: rotateGrace,
	}, nil
}

// Stats returns a snapshot; it is safe to call while Run runs.
func (f *Follower) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}

func (f *Follower) updateStats(fn func(s *Stats)) {
	f.mu.Lock()
	fn(&f.stats)
	f.mu.Unlock()
}
