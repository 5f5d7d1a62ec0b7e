//go:build !unix

package uses

import (
	"fmt"
	"os"
)

// dup returns a second handle on f's file, opened again by its name: where
// handles cannot be duplicated, a file renamed meanwhile is not found.
func dup(f *os.File) (*os.File, error) {
	nf, err := os.Open(f.Name())
	if err != nil {
		return nil, fmt.Errorf("open %s again: %w", f.Name(), err)
	}
	return nf, nil
}
