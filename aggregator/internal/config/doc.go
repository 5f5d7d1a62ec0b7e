// Package config owns the aggregator's configuration file: its YAML schema,
// defaults, validation, and live reload when the file changes on disk.
//
// Unknown keys are errors, durations use Go syntax ("2s", "10m"), and every
// validation error names the field it is about ("correlation.window: must be
// > 0"). A Watcher re-reads the file when it changes (fsnotify on its
// directory, which also sees a Kubernetes ConfigMap's symlink swap, plus a
// poll as a fallback); an invalid new file is rejected with a log line and
// the previous configuration stays in force.
package config
