// Command coredns is CoreDNS v1.14.6 (github.com/coredns/coredns, pinned in
// go.mod) with only the plugins a single-node cluster's DNS needs: cluster
// names answered from the Kubernetes API, nothing forwarded anywhere.
//
// kubeadm's CoreDNS ends its Corefile with `forward . /etc/resolv.conf`,
// which would send every name it does not own to the machine's resolver.
// The sa-lab kind cluster must not send a packet off the machine, so this
// build leaves out every plugin that talks to another server (forward, grpc,
// etcd, the cloud DNS plugins): a Corefile asking for one fails to load
// instead of leaking. The cluster's Corefile is kind/coredns.yaml.
package main

import (
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"

	"github.com/coredns/coredns/coremain"
)

func main() {
	coremain.Run()
}
