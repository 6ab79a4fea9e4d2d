//go:build tools

// Package tools pins kube-router in go.mod; build.sh compiles it.
package tools

import _ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
