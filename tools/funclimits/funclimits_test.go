// Package funclimits checks that the product's functions fit a screen: no
// function longer than MaxLines lines and none with a cyclomatic complexity
// above MaxComplexity, outside tests and generated code.
//
// Cyclomatic complexity is gocyclo's: 1, plus one for each if, for, range,
// non-default case and select clause, && and ||, counting the function
// literals inside a function as part of it. Length is the number of lines
// from the func keyword to the closing brace.
//
// allowlist.txt names the functions that exceed a limit today, with their
// figures. It may only shrink: a listed function may not grow past its
// figures, and an entry for a function that now fits, or no longer exists,
// must be removed.
package funclimits

import (
	"bufio"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// The limits.
const (
	MaxLines      = 80
	MaxComplexity = 20
)

// root is the repository root, two levels up from this module.
const root = "../.."

// skipped are folders of the product module that hold no product code.
var skipped = map[string]bool{"e2e": true, "tools": true, "deploy/check": true}

// generated is the line go generate tools write (https://go.dev/s/generatedcode).
var generated = regexp.MustCompile(`(?m)^// Code generated .* DO NOT EDIT\.$`)

// figure is one function's measurements.
type figure struct {
	lines, complexity int
}

func (f figure) String() string { return fmt.Sprintf("lines=%d complexity=%d", f.lines, f.complexity) }

func (f figure) over() bool { return f.lines > MaxLines || f.complexity > MaxComplexity }

// measure returns every function of the product module by "file:Func" (or
// "file:Recv.Method").
func measure(t *testing.T) map[string]figure {
	t.Helper()
	out := map[string]figure{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel == "." {
				return nil
			}
			if skipped[rel] || strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
				return filepath.SkipDir // another module
			}
			return nil
		}
		if !strings.HasSuffix(rel, ".go") || strings.HasSuffix(rel, "_test.go") || strings.HasSuffix(rel, ".pb.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if generated.Match(src) {
			return nil
		}
		f, err := parser.ParseFile(fset, path, src, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			out[rel+":"+name(fn)] = figure{
				lines:      fset.Position(fn.End()).Line - fset.Position(fn.Pos()).Line + 1,
				complexity: complexity(fn),
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	if len(out) == 0 {
		t.Fatalf("no functions found under %s", root)
	}
	return out
}

// name is Func, or Recv.Method for a method.
func name(fn *ast.FuncDecl) string {
	if fn.Recv == nil || len(fn.Recv.List) == 0 {
		return fn.Name.Name
	}
	typ := fn.Recv.List[0].Type
	for {
		switch x := typ.(type) {
		case *ast.StarExpr:
			typ = x.X
			continue
		case *ast.IndexExpr:
			typ = x.X
			continue
		case *ast.IndexListExpr:
			typ = x.X
			continue
		case *ast.Ident:
			return x.Name + "." + fn.Name.Name
		}
		return fn.Name.Name
	}
}

// complexity is gocyclo's cyclomatic complexity of fn.
func complexity(fn *ast.FuncDecl) int {
	c := 1
	ast.Inspect(fn, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.IfStmt, *ast.ForStmt, *ast.RangeStmt:
			c++
		case *ast.CaseClause:
			if n.List != nil {
				c++
			}
		case *ast.CommClause:
			if n.Comm != nil {
				c++
			}
		case *ast.BinaryExpr:
			if n.Op == token.LAND || n.Op == token.LOR {
				c++
			}
		}
		return true
	})
	return c
}

// readAllowlist reads allowlist.txt: "file:Func lines=N complexity=N" per
// line; blank lines and # comments are ignored.
func readAllowlist(t *testing.T) map[string]figure {
	t.Helper()
	f, err := os.Open("allowlist.txt")
	if err != nil {
		t.Fatalf("read allowlist: %v", err)
	}
	defer f.Close()
	out := map[string]figure{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var key, l, c string
		if k, err := fmt.Sscan(line, &key, &l, &c); err != nil || k != 3 {
			t.Fatalf("allowlist.txt:%d: want \"file:Func lines=N complexity=N\", got %q", n, line)
		}
		lines, err1 := strconv.Atoi(strings.TrimPrefix(l, "lines="))
		cx, err2 := strconv.Atoi(strings.TrimPrefix(c, "complexity="))
		if err1 != nil || err2 != nil {
			t.Fatalf("allowlist.txt:%d: want \"file:Func lines=N complexity=N\", got %q", n, line)
		}
		if _, dup := out[key]; dup {
			t.Fatalf("allowlist.txt:%d: %s listed twice", n, key)
		}
		out[key] = figure{lines: lines, complexity: cx}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read allowlist: %v", err)
	}
	return out
}

func TestFunctionLimits(t *testing.T) {
	got := measure(t)
	allowed := readAllowlist(t)
	keys := make([]string, 0, len(got))
	for k := range got {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		f := got[k]
		if !f.over() {
			continue
		}
		a, ok := allowed[k]
		switch {
		case !ok:
			t.Errorf("%s: %v, want lines <= %d and complexity <= %d: split it", k, f, MaxLines, MaxComplexity)
		case f.lines > max(a.lines, MaxLines) || f.complexity > max(a.complexity, MaxComplexity):
			t.Errorf("%s: %v, grew past its allowlist entry %v: the allowlist may only shrink", k, f, a)
		}
	}
	for k, a := range allowed {
		if f, ok := got[k]; !ok || !f.over() {
			t.Errorf("allowlist.txt: %s (%v) is gone or now within the limits: remove its entry", k, a)
		}
	}
}

// TestComplexity pins the measure against gocyclo's definition.
func TestComplexity(t *testing.T) {
	tests := []struct {
		name, give string
		want       int
	}{
		{"empty", `func f() {}`, 1},
		{"if and loop", `func f(a []int) { if true {}; for range a {}; for {} }`, 4},
		{"switch without default", `func f(x int) { switch x { case 1, 2: case 3: default: } }`, 3},
		{"select", `func f(c chan int) { select { case <-c: case c <- 1: default: } }`, 3},
		{"boolean operators", `func f(a, b, c bool) bool { return a && b || c }`, 3},
		{"function literal counts", `func f() { g := func() { if true {} }; g() }`, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := parser.ParseFile(token.NewFileSet(), "x.go", "package x\n"+tt.give, 0)
			if err != nil {
				t.Fatal(err)
			}
			if got := complexity(f.Decls[0].(*ast.FuncDecl)); got != tt.want {
				t.Errorf("complexity(%s) = %d, want %d", tt.give, got, tt.want)
			}
		})
	}
}
