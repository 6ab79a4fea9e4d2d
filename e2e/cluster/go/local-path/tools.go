//go:build tools

// Package tools pins the provisioner in go.mod; build.sh compiles it.
package tools

import _ "github.com/rancher/local-path-provisioner"
