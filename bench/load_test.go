package main

import (
	"os"
	"os/exec"
	"slices"
	"testing"
)

func TestProcessTree(t *testing.T) {
	child := exec.Command("sleep", "30")
	if err := child.Start(); err != nil {
		t.Skip("no sleep command:", err)
	}
	defer func() { child.Process.Kill(); child.Wait() }()
	tree := processTree(os.Getpid())
	if tree[0] != os.Getpid() || !slices.Contains(tree, child.Process.Pid) {
		t.Fatalf("processTree(%d) = %v, want it and its child %d", os.Getpid(), tree, child.Process.Pid)
	}
	if slices.Contains(processTree(child.Process.Pid), os.Getpid()) {
		t.Fatal("a child's tree holds its parent")
	}
	if rssKiB(os.Getpid()) <= rssKiB(child.Process.Pid) {
		t.Fatal("the tree's RSS is not above its child's alone")
	}
}
