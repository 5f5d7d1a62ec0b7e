package server

import "errors"

// ErrConfig is matched (errors.Is) by Run's error when the configuration
// file (--config) or a certificate file a flag names cannot be used; main
// exits 2 then, as for a bad flag: the operator has to fix the file.
var ErrConfig = errors.New("bad configuration")

// configError marks err as ErrConfig without changing its text.
type configError struct{ err error }

func (e configError) Error() string        { return e.err.Error() }
func (e configError) Unwrap() error        { return e.err }
func (e configError) Is(target error) bool { return target == ErrConfig }
