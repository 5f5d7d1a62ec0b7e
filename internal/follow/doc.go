// Package follow reads the kube-apiserver audit log losslessly: it follows the
// live file, finishes every rotated file through its own handle (or finds it
// again by identity, compressed or not), and hands out blocks of whole lines
// with the exact position of their first byte in an identified file.
//
// Rotation by rename (lumberjack, as the apiserver does it), later gzip of
// the backups, copytruncate (logrotate), a live file that is missing, deleted
// or recreated, torn last lines and over-long lines are handled; data that
// cannot be delivered is reported as a Loss, never dropped silently. fsnotify
// only wakes the follower up early: correctness rests on polling and on
// rescanning the siblings of the live file.
//
// nxadm/tail is not used here: it loses the tail of each rotated file, can
// exit the process on stat errors and hands out a string per line. See
// docs/FOLLOWING.md for the measurements.
package follow
