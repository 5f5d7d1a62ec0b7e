package guard

import (
	"net"
	"testing"
)

// discardConn is a net.Conn whose writes succeed and go nowhere.
type discardConn struct{ net.Conn }

func (discardConn) Write(p []byte) (int, error) { return len(p), nil }

func TestWatchedConnFindsGoAwayAcrossWrites(t *testing.T) {
	frame := append([]byte("\x00\x00\x16\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00"), goAwayTooManyPings...)
	tests := []struct {
		name   string
		writes [][]byte
		want   int
	}{
		{name: "one write", writes: [][]byte{frame}, want: 1},
		{name: "split in the pattern", writes: [][]byte{frame[:16], frame[16:]}, want: 1},
		{name: "split byte by byte", writes: bytesOf(frame), want: 1},
		{name: "twice counts once", writes: [][]byte{frame, frame}, want: 1},
		{name: "debug data alone is not the frame", writes: [][]byte{[]byte("too_many_pings")}, want: 0},
		{name: "another error code", writes: [][]byte{[]byte("\x00\x00\x00\x02too_many_pings")}, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := 0
			c := &watchedConn{Conn: discardConn{}, onGoAway: func() { got++ }}
			for _, w := range tt.writes {
				if _, err := c.Write(w); err != nil {
					t.Fatal(err)
				}
			}
			if got != tt.want {
				t.Errorf("onGoAway called %d times, want %d", got, tt.want)
			}
		})
	}
}

func bytesOf(b []byte) [][]byte {
	out := make([][]byte, len(b))
	for i := range b {
		out[i] = b[i : i+1]
	}
	return out
}
