// Package config owns the aggregator's configuration file: its YAML schema,
// defaults, validation, and live reload when the file changes on disk.
//
// The schema is assembled, not copied: each section is the configuration
// type of the component it tunes, which carries the section's yaml tags, its
// DefaultConfig and a Validate naming the offending key (exclusions is
// rule.Config, correlation correlate.Config, budget budget.Config, silence
// silence.Config, and limits inlines the gRPC server's guard.Config). Only
// alerting and the limits no single component owns are declared here;
// Default assembles the components' defaults and Validate joins their
// errors on one line.
//
// Unknown keys are errors, durations use Go syntax ("2s", "10m"), and every
// validation error names the field it is about ("correlation.window: must be
// > 0"). A Watcher re-reads the file when it changes (fsnotify on its
// directory, which also sees a Kubernetes ConfigMap's symlink swap, plus a
// poll as a fallback); an invalid new file is rejected with a log line and
// the previous configuration stays in force.
package config
