// Command sa-lab-control-plane is kube-apiserver, kube-controller-manager and
// kube-scheduler (k8s.io/kubernetes, pinned in ../go.mod) in one binary, run
// as whichever of the three its name says: scripts/install-k8s.sh links the
// three names to it. Each main below is its upstream cmd/<name>/main.go.
//
// Why one binary (upstream shipped the same as hyperkube until 1.17): the
// three share most of their code. As three binaries the machine holds that
// code three times, about 200 MiB of the local cluster's memory; as one, the
// kernel keeps one copy of each page the three read (the page cache backs
// all three mappings). A cold build also links once instead of three times.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	_ "time/tzdata" // for CronJob time zones (kube-apiserver, kube-controller-manager)

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

var commands = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
}

func main() {
	name := filepath.Base(os.Args[0])
	command, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "%s: run me as kube-apiserver, kube-controller-manager or kube-scheduler (a link named so)\n", name)
		os.Exit(2)
	}
	os.Exit(cli.Run(command()))
}
