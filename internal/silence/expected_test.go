package silence

import (
	"reflect"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestExpectedNodes: a cluster of ExpectedNodes with fewer nodes tracked
// for After is silent (nodes_missing) with the nodes heard, once; enough
// nodes, or the cluster no longer expected, resume it; a cluster that
// never connected is silent too.
func TestExpectedNodes(t *testing.T) {
	type rec struct {
		Kind, Cluster string
		Heard         []string
	}
	type step struct {
		join     []string // nodes of prod heard this minute
		expected map[string]int
	}
	two := map[string]int{"prod": 2}
	tests := []struct {
		name  string
		steps []step // per minute
		want  map[int][]rec
	}{
		{"all there", []step{{[]string{"n1", "n2"}, two}, {nil, two}, {nil, two}, {nil, two}, {nil, two}, {nil, two}}, nil},
		{"one missing, then joins", []step{{[]string{"n1"}, two}, {nil, two}, {nil, two}, {nil, two}, {nil, two}, {nil, two}, {[]string{"n2"}, two}},
			map[int][]rec{5: {{"cluster_silent", "prod", []string{"n1"}}}, 6: {{"cluster_resumed", "prod", []string{"n1", "n2"}}}}},
		{"joins within After: nothing", []step{{[]string{"n1"}, two}, {nil, two}, {[]string{"n2"}, two}, {nil, two}, {nil, two}, {nil, two}, {nil, two}}, nil},
		{"never connected", []step{{nil, map[string]int{"staging": 1}}, {nil, nil}, {nil, nil}, {nil, nil}, {nil, nil}, {nil, nil}},
			map[int][]rec{5: {{"cluster_silent", "staging", []string{}}}}},
		{"no longer expected", []step{{[]string{"n1"}, two}, {nil, two}, {nil, two}, {nil, two}, {nil, two}, {nil, two}, {nil, map[string]int{}}},
			map[int][]rec{5: {{"cluster_silent", "prod", []string{"n1"}}}, 6: {{"cluster_resumed", "prod", []string{"n1"}}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{After: 5 * time.Minute}
			tr := New(cfg)
			for m, s := range tt.steps {
				if s.expected != nil {
					cfg.ExpectedNodes = s.expected
					tr.SetConfig(cfg)
				}
				for _, n := range s.join {
					tr.Join(at(float64(m)), "prod", n)
				}
				for _, n := range []string{"n1", "n2"} { // keep the joined ones heard
					if tr.nodes[node{"prod", n}] != nil {
						tr.HeardBeat(at(float64(m)), "prod", n, Beat{LastGrowth: agentClock(float64(m)), File: FilePresent})
					}
				}
				var got []rec
				for _, r := range tr.Check(at(float64(m))) {
					if reason, _ := r.Attr("tokenwatch.silence.reason"); reason.Str != ReasonNodesMissing {
						continue
					}
					kind, _ := r.Attr("tokenwatch.pipeline.kind")
					c, _ := r.Attr("k8s.cluster.name")
					heard, _ := r.Attr("tokenwatch.nodes.heard_names")
					got = append(got, rec{kind.Str, c.Str, heard.Strings})
				}
				if diff := cmp.Diff(tt.want[m], got); diff != "" {
					t.Errorf("minute %d (-want +got):\n%s", m, diff)
				}
			}
		})
	}
}

// TestConfigEqual: every field of Config counts in Equal.
func TestConfigEqual(t *testing.T) {
	base := Config{After: time.Minute, MaxNodesPerCluster: 3, ForgetAfter: time.Hour, TokenRequestsAfter: time.Hour, ExpectedNodes: map[string]int{"a": 1}}
	if !base.Equal(base) {
		t.Fatal("a config is not Equal to itself")
	}
	v := reflect.ValueOf(&base).Elem()
	for i := range v.NumField() {
		o := base
		o.ExpectedNodes = map[string]int{"a": 1}
		f := reflect.ValueOf(&o).Elem().Field(i)
		switch f.Kind() {
		case reflect.Int64, reflect.Int:
			f.SetInt(f.Int() + 1)
		case reflect.Map:
			o.ExpectedNodes = map[string]int{"a": 2}
		default:
			t.Fatalf("field %s: kind %s not covered by this test", v.Type().Field(i).Name, f.Kind())
		}
		if base.Equal(o) {
			t.Errorf("Equal ignores field %s", v.Type().Field(i).Name)
		}
	}
}
