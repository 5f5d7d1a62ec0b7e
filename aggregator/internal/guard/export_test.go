package guard

// SetAdmitted sets a hook called once a new stream has been admitted (nil)
// or refused by the stream limits: the signal tests wait for.
func (g *Guard) SetAdmitted(f func(error)) { g.admitted.Store(&f) }
