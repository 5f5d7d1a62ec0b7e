package follow

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMissingFileNamedOnce: an os error already names the file, so the
// error Run returns names it once ("open X: ...", not "open X: open X: ...").
func TestMissingFileNamedOnce(t *testing.T) {
	for _, name := range []string{"audit.log", "audit.log.gz"} {
		path := filepath.Join(t.TempDir(), name)
		f, err := New(Config{Path: path, Once: true})
		if err != nil {
			t.Fatal(err)
		}
		err = f.Run(context.Background(), newRecorder())
		if !errors.Is(err, os.ErrNotExist) || strings.Count(err.Error(), path) != 1 {
			t.Errorf("Run on missing %s = %v, want a not-exist error naming the file once", name, err)
		}
	}
}
