// Package prefilter finds the audit log lines that may be token creates
// without decoding every line as JSON, and decodes only those.
//
// A line can only be a create on serviceaccounts/token if its JSON holds the
// string value "token" (objectRef.subresource). In the raw bytes that value
// is either the literal `"token"` or it uses at least one \u escape for one
// of its letters: \u0074, \u006f, \u006b, \u0065 or \u006e (hex digits in
// either case). JSON has no other way to write those letters, so a line with
// neither form cannot decode to a token create. The same reasoning on the
// values "create" and "serviceaccounts" (Plausible) drops most decoys
// cheaply; the remaining candidates are decoded in full with audit.Decode,
// the only judge: lines that merely mention the word (a get on
// .../token, a create of secrets/x/token, a SubjectAccessReview body) are
// dropped there.
//
// The scan runs over a whole block with vectorised byte searches: the rare
// byte 'k' for the literal form and '\' for the escaped form. The package is
// pure: no I/O, no clock.
package prefilter
