package main

import "github.com/tokenwatch/tokenwatch/agent/internal/agent"

// auditLogFlag is --audit-log: its first value replaces the default in
// Config.AuditLog, later values (a replay of several files, with --once)
// go to Config.MoreAuditLogs.
type auditLogFlag struct {
	c   *agent.Config
	set bool
}

func (f *auditLogFlag) String() string {
	if f == nil || f.c == nil {
		return ""
	}
	return f.c.AuditLog
}

func (f *auditLogFlag) Set(v string) error {
	if !f.set {
		f.c.AuditLog, f.set = v, true
		return nil
	}
	f.c.MoreAuditLogs = append(f.c.MoreAuditLogs, v)
	return nil
}
