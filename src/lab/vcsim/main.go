// The lab's vCenter: govmomi's simulator started exactly as govmomi's own vcsim command (v0.46.3) starts it,
// plus VirtualMachine.ExportVm and OvfManager.CreateDescriptor (export.go, descriptor.go), which the
// simulator lacks and `govc export.ovf` needs, and the host's side of the lab's transports (disks.go:
// disks hot-added to proxy VMs appear as devices; san.go: block maps of LUN-backed datastores).
package main

import (
	"crypto/tls"
	"expvar"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/google/uuid"

	"github.com/vmware/govmomi/session"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/esx"
	"github.com/vmware/govmomi/vim25/types"

	// The optional endpoints the stock vcsim registers.
	_ "github.com/vmware/govmomi/cns/simulator"
	_ "github.com/vmware/govmomi/eam/simulator"
	_ "github.com/vmware/govmomi/lookup/simulator"
	_ "github.com/vmware/govmomi/pbm/simulator"
	_ "github.com/vmware/govmomi/ssoadmin/simulator"
	_ "github.com/vmware/govmomi/sts/simulator"
	_ "github.com/vmware/govmomi/vapi/appliance/simulator"
	_ "github.com/vmware/govmomi/vapi/cis/tasks/simulator"
	_ "github.com/vmware/govmomi/vapi/cluster/simulator"
	_ "github.com/vmware/govmomi/vapi/crypto/simulator"
	_ "github.com/vmware/govmomi/vapi/esx/settings/simulator"
	_ "github.com/vmware/govmomi/vapi/namespace/simulator"
	_ "github.com/vmware/govmomi/vapi/simulator"
	_ "github.com/vmware/govmomi/vapi/vcenter/consumptiondomains/simulator"
	_ "github.com/vmware/govmomi/vapi/vm/simulator"
	_ "github.com/vmware/govmomi/vsan/simulator"
)

func main() {
	model := simulator.VPX()

	flag.IntVar(&model.Datacenter, "dc", model.Datacenter, "Number of datacenters")
	flag.IntVar(&model.Cluster, "cluster", model.Cluster, "Number of clusters")
	flag.IntVar(&model.ClusterHost, "host", model.ClusterHost, "Number of hosts per cluster")
	flag.IntVar(&model.Host, "standalone-host", model.Host, "Number of standalone hosts")
	flag.IntVar(&model.Datastore, "ds", model.Datastore, "Number of local datastores")
	flag.IntVar(&model.Machine, "vm", model.Machine, "Number of virtual machines per resource pool")
	flag.IntVar(&model.Pool, "pool", model.Pool, "Number of resource pools per compute resource")
	flag.IntVar(&model.App, "app", model.App, "Number of virtual apps per compute resource")
	flag.IntVar(&model.Pod, "pod", model.Pod, "Number of storage pods per datacenter")
	flag.IntVar(&model.Portgroup, "pg", model.Portgroup, "Number of port groups")
	flag.IntVar(&model.PortgroupNSX, "pg-nsx", model.PortgroupNSX, "Number of NSX backed port groups")
	flag.IntVar(&model.OpaqueNetwork, "nsx", model.OpaqueNetwork, "Number of NSX backed opaque networks")
	flag.IntVar(&model.Folder, "folder", model.Folder, "Number of folders")
	flag.BoolVar(&model.Autostart, "autostart", model.Autostart, "Autostart model created VMs")
	apiVersion := &model.ServiceContent.About.ApiVersion
	flag.StringVar(apiVersion, "api-version", *apiVersion, "API version")

	isESX := flag.Bool("esx", false, "Simulate standalone ESX")
	isTLS := flag.Bool("tls", true, "Enable TLS")
	cert := flag.String("tlscert", "", "Path to TLS certificate file")
	key := flag.String("tlskey", "", "Path to TLS key file")
	env := flag.String("E", "-", "Output vcsim variables to the given fifo or stdout")
	listen := flag.String("l", "127.0.0.1:8989", "Listen address for vcsim")
	user := flag.String("username", "", "Login username for vcsim (any username allowed by default)")
	pass := flag.String("password", "", "Login password for vcsim (any password allowed by default)")
	tunnel := flag.Int("tunnel", -1, "SDK tunnel port")
	flag.BoolVar(&simulator.Trace, "trace", simulator.Trace, "Trace SOAP to -trace-file")
	traceFile := flag.String("trace-file", "", "Trace output file (defaults to stderr)")
	stdinExit := flag.Bool("stdinexit", false, "Press any key to exit")
	loadDir := flag.String("load", "", "Load model from directory")
	qemuImg := flag.String("qemu-img", "qemu-img", "qemu-img used to make the stream-optimized VMDKs of ExportVm")
	proxyDevices := flag.String("proxy-devices", "", "Folder where disks attached to proxy VMs appear, as <folder>/<vm>/by-id/wwn-0x<uuid> (disks.go)")
	loopDevices := flag.Bool("loop-devices", true, "Back proxy VM disk links with loop devices (root); otherwise link the flat extents")
	sanDatastores := flag.String("san-datastores", "", "Comma-separated LUN-backed datastores: thick disks allocated, SAN block maps served (san.go)")

	flag.IntVar(&model.DelayConfig.Delay, "delay", model.DelayConfig.Delay, "Method response delay across all methods")
	methodDelay := flag.String("method-delay", "", "Delay per method on the form 'method1:delay1,method2:delay2...'")
	flag.Float64Var(&model.DelayConfig.DelayJitter, "delay-jitter", model.DelayConfig.DelayJitter, "Delay jitter coefficient of variation (tip: 0.5 is a good starting value)")

	flag.Parse()

	if *traceFile != "" {
		f, err := os.Create(*traceFile)
		if err != nil {
			log.Fatal(err)
		}
		simulator.TraceFile = f
		simulator.Trace = true
	}

	u := &url.URL{Host: *listen}
	if *user != "" {
		u.User = url.UserPassword(secret(*user), secret(*pass))
	}

	switch flag.Arg(0) {
	case "uuidgen":
		fmt.Println(uuid.New().String())
		os.Exit(0)
	case "version":
		fmt.Println("govmomi simulator v0.46.3 with ExportVm (vmrestore lab)")
		os.Exit(0)
	}

	if *methodDelay != "" {
		delays, err := parseMethodDelay(*methodDelay)
		if err != nil {
			log.Fatal(err)
		}
		model.DelayConfig.MethodDelay = delays
		simulator.TaskDelay.MethodDelay = delays
	}

	if err := updateHostTemplate(u.Host); err != nil {
		log.Fatal(err)
	}

	if *isESX {
		opts := model
		model = simulator.ESX()
		// As the stock vcsim: these options also apply to an ESX model.
		model.Datastore = opts.Datastore
		model.Machine = opts.Machine
		model.Autostart = opts.Autostart
		model.DelayConfig.Delay = opts.DelayConfig.Delay
		model.DelayConfig.MethodDelay = opts.DelayConfig.MethodDelay
		model.DelayConfig.DelayJitter = opts.DelayConfig.DelayJitter
	}

	tag := " (govmomi simulator)"
	model.ServiceContent.About.FullName += tag
	model.ServiceContent.About.OsType = runtime.GOOS + "-" + runtime.GOARCH
	esx.HostSystem.Summary.Hardware.Vendor += tag

	var err error
	if *loadDir == "" {
		err = model.Create()
	} else {
		err = model.Load(*loadDir)
	}
	if err != nil {
		log.Fatal(err)
	}

	scheme := "http"
	if *isTLS {
		scheme = "https"
	}
	exporter := newExporter(scheme, *qemuImg)
	simulator.Map.Put(exporter)
	simulator.Map.Handler = exporter.route
	http.DefaultServeMux.HandleFunc(exportPrefix, exporter.serveDisk)
	disks := newDiskHost(*proxyDevices, *loopDevices, strings.Split(*sanDatastores, ","))
	simulator.Map.AddHandler(disks)
	http.DefaultServeMux.HandleFunc(sanPrefix, disks.serveSan)

	model.Service.RegisterEndpoints = true
	model.Service.Listen = u
	if *isTLS {
		model.Service.TLS = new(tls.Config)
		if *cert != "" {
			c, err := tls.LoadX509KeyPair(*cert, *key)
			if err != nil {
				log.Fatal(err)
			}
			model.Service.TLS.Certificates = []tls.Certificate{c}
		}
	}

	expvar.Publish("vcsim", expvar.Func(func() interface{} {
		count := model.Count()
		return struct {
			Registry *simulator.Registry `json:"registry"`
			Model    *simulator.Model    `json:"model"`
		}{simulator.Map, &count}
	}))

	// expvar registers /debug/vars on the DefaultServeMux, as the export disks are.
	model.Service.ServeMux = http.DefaultServeMux

	s := model.Service.NewServer()

	if *tunnel >= 0 {
		s.Tunnel = *tunnel
		if err := s.StartTunnel(); err != nil {
			log.Fatal(err)
		}
	}

	out := os.Stdout
	if *env != "-" {
		out, err = os.OpenFile(*env, os.O_WRONLY, 0)
		if err != nil {
			log.Fatal(err)
		}
	}
	if _, err = fmt.Fprintf(out, "export GOVC_URL=%s GOVC_SIM_PID=%d\n", s.URL, os.Getpid()); err != nil {
		log.Fatal(err)
	}
	if out != os.Stdout {
		if err = out.Close(); err != nil {
			log.Fatal(err)
		}
	}

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	if *stdinExit {
		fmt.Println("Press any key to exit")
		go func() {
			_, _ = os.Stdin.Read(make([]byte, 1))
			sig <- syscall.SIGTERM
		}()
	}

	<-sig

	exporter.removeAll()
	disks.removeAll()
	model.Remove()

	if *traceFile != "" {
		_ = simulator.TraceFile.Close()
	}
}

func parseMethodDelay(spec string) (map[string]int, error) {
	delays := make(map[string]int)
	for _, entry := range strings.Split(spec, ",") {
		parts := strings.Split(strings.TrimSpace(entry), ":")
		if len(parts) != 2 {
			return nil, fmt.Errorf("method-delay %q: want method:delay", entry)
		}
		n, err := strconv.Atoi(parts[1])
		if err != nil {
			return nil, fmt.Errorf("method-delay %q: %s", entry, err)
		}
		delays[parts[0]] = n
	}
	return delays, nil
}

// updateHostTemplate makes the simulated hosts report the listen address, as the stock vcsim does.
func updateHostTemplate(hostPort string) error {
	addr, port, err := net.SplitHostPort(hostPort)
	if err != nil {
		return err
	}
	esx.HostSystem.Summary.ManagementServerIp = addr
	if port != "0" { // an auto-selected port is known only once the server listens
		n, err := strconv.Atoi(port)
		if err != nil {
			return err
		}
		esx.HostSystem.Summary.Config.Port = int32(n)
	}

	nics := [][]types.HostVirtualNic{
		esx.HostConfigInfo.Network.Vnic,
		esx.HostConfigInfo.Vmotion.NetConfig.CandidateVnic,
	}
	for _, nic := range esx.HostConfigInfo.VirtualNicManagerInfo.NetConfig {
		nics = append(nics, nic.CandidateVnic)
	}
	for _, nic := range nics {
		for i := range nic {
			nic[i].Spec.Ip.IpAddress = addr
		}
	}
	return nil
}

// secret reads a flag value that is either a literal or the path of a file holding it.
func secret(value string) string {
	v, err := session.Secret(value)
	if err != nil {
		log.Fatal(err)
	}
	return v
}
