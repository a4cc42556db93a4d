package main

// What a host does with a virtual disk's files that the simulator leaves out, for the lab's transports:
//   - a new disk's flat extent gets its full size (thin: a sparse file; thick on a LUN-backed datastore:
//     blocks reserved with fallocate, unwritten until first written, as VMFS's lazy-zeroed thick disks);
//   - disk backing UUIDs take the form vSphere gives them (6000C29…), which a guest with
//     disk.EnableUUID sees as the disk's SCSI NAA identifier;
//   - a disk attached to a backup proxy VM (extraConfig vmrestore.role = proxy) appears inside that VM,
//     as udev names it: <devices>/<vm name>/by-id/wwn-0x<uuid hex> and scsi-3<uuid hex>, pointing at a
//     loop device on the flat extent (or at the flat extent itself when loop devices are not usable).
//     Detaching the disk removes them; a disk attached to one proxy VM is not visible in another.

import (
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// diskHost is a registry handler: it sees every device change of every VM.
type diskHost struct {
	Self          types.ManagedObjectReference
	devices       string          // per-proxy device folders; "" turns the proxy devices off
	useLoop       bool            // loop devices on the flat extents, else symlinks to the files
	sanDatastores map[string]bool // LUN-backed datastores: thick disks are allocated there

	queue chan proxyDisks

	mu       sync.Mutex
	stopped  bool
	attached map[string]map[string]string // proxy VM name → uuid hex → loop device or flat file

	names sync.Map // proxy VM reference → name, to clean up after a destroyed proxy VM
}

// proxyDisks is the disks a proxy VM had after one reconfiguration: uuid hex → flat extent.
type proxyDisks struct {
	vm    string
	disks map[string]string
	gone  bool // the VM was destroyed: its devices and folder go
}

func newDiskHost(devices string, useLoop bool, san []string) *diskHost {
	h := &diskHost{
		Self:          types.ManagedObjectReference{Type: "VmrestoreLabDiskHost", Value: "disk-host"},
		devices:       devices,
		useLoop:       useLoop,
		sanDatastores: map[string]bool{},
		queue:         make(chan proxyDisks, 256),
		attached:      map[string]map[string]string{},
	}
	for _, ds := range san {
		if ds != "" {
			h.sanDatastores[ds] = true
		}
	}
	go h.run()
	return h
}

func (h *diskHost) Reference() types.ManagedObjectReference { return h.Self }
func (h *diskHost) PutObject(mo.Reference)                  {}

func (h *diskHost) RemoveObject(_ *simulator.Context, ref types.ManagedObjectReference) {
	if name, ok := h.names.LoadAndDelete(ref); ok && h.devices != "" {
		h.queue <- proxyDisks{vm: name.(string), disks: map[string]string{}, gone: true}
	}
}

func (h *diskHost) UpdateObject(ctx *simulator.Context, obj mo.Reference, changes []types.PropertyChange) {
	vm, ok := obj.(*mo.VirtualMachine)
	if !ok || vm.Config == nil {
		return
	}
	touched := false
	for _, c := range changes {
		// A new VM's extraConfig (the proxy role) is applied after its devices.
		if c.Name == "config.hardware.device" || strings.HasPrefix(c.Name, "config.extraConfig") {
			touched = true
		}
	}
	if !touched {
		return
	}
	disks := map[string]string{}
	for _, d := range object.VirtualDeviceList(vm.Config.Hardware.Device).SelectByType((*types.VirtualDisk)(nil)) {
		disk := d.(*types.VirtualDisk)
		b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
		if !ok {
			continue
		}
		b.Uuid = vmwareDiskUUID(b.Uuid)
		var p object.DatastorePath
		if !p.FromString(b.FileName) {
			continue
		}
		root := datastoreURL(ctx, p.Datastore)
		if root == "" {
			continue
		}
		flat := filepath.Join(root, strings.Replace(p.Path, ".vmdk", "-flat.vmdk", 1))
		thin := b.ThinProvisioned != nil && *b.ThinProvisioned
		h.size(flat, disk.CapacityInBytes, !thin && h.sanDatastores[p.Datastore])
		disks[uuidHex(b.Uuid)] = flat
	}
	if h.devices != "" && isProxy(vm) && safeName(vm.Name) {
		// Destroy unregisters the VM first, then removes its devices.
		gone := ctx.Map.Get(vm.Self) == nil
		if !gone {
			h.names.Store(vm.Self, vm.Name)
		}
		h.queue <- proxyDisks{vm: vm.Name, disks: disks, gone: gone}
	}
}

// vmwareDiskUUID keeps a vSphere-style disk UUID and turns the simulator's name-based one into that form,
// deterministically, so every VM attaching the same file sees the same UUID.
func vmwareDiskUUID(u string) string {
	hex := uuidHex(u)
	if len(hex) != 32 || strings.HasPrefix(hex, "6000c29") {
		return u
	}
	hex = "6000c29" + hex[7:]
	return strings.ToUpper(fmt.Sprintf("%s-%s-%s-%s-%s", hex[0:8], hex[8:12], hex[12:16], hex[16:20], hex[20:32]))
}

// safeName: a VM name that is one path element, so its device folder stays inside the devices folder.
func safeName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\x00")
}

func uuidHex(u string) string { return strings.ToLower(strings.ReplaceAll(u, "-", "")) }

func isProxy(vm *mo.VirtualMachine) bool {
	for _, o := range vm.Config.ExtraConfig {
		if ov := o.GetOptionValue(); ov.Key == "vmrestore.role" && fmt.Sprint(ov.Value) == "proxy" {
			return true
		}
	}
	return false
}

func datastoreURL(ctx *simulator.Context, name string) string {
	for _, e := range ctx.Map.All("Datastore") {
		if ds, ok := e.(*simulator.Datastore); ok && ds.Name == name {
			return ds.Info.GetDatastoreInfo().Url
		}
	}
	return ""
}

// size gives a just-created flat extent (still empty) its capacity.
func (h *diskHost) size(flat string, capacity int64, allocate bool) {
	st, err := os.Stat(flat)
	if err != nil || st.Size() != 0 || capacity <= 0 {
		return
	}
	f, err := os.OpenFile(flat, os.O_RDWR, 0)
	if err != nil {
		return
	}
	defer f.Close()
	var fs syscall.Statfs_t
	if allocate && syscall.Fstatfs(int(f.Fd()), &fs) == nil && int64(fs.Bavail)*fs.Bsize < capacity {
		// vcsim counts a datastore's free space itself, so a disk it accepted may not fit on the LUN.
		log.Printf("disk host: %s (%d bytes) does not fit on its LUN; leaving it sparse", flat, capacity)
		allocate = false
	}
	if allocate {
		if err := syscall.Fallocate(int(f.Fd()), 0, 0, capacity); err == nil {
			return
		} else {
			log.Printf("disk host: fallocate %s (%d bytes): %v; leaving it sparse", flat, capacity, err)
		}
	}
	_ = f.Truncate(capacity)
}

// run applies the proxies' disk sets in order, as udev does the kernel's add and remove events.
func (h *diskHost) run() {
	for pd := range h.queue {
		h.apply(pd)
	}
}

func (h *diskHost) apply(pd proxyDisks) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		return
	}
	dir := filepath.Join(h.devices, pd.vm, "by-id")
	if pd.gone {
		for id, target := range h.attached[pd.vm] {
			removeLinks(dir, id)
			h.release(target)
		}
		delete(h.attached, pd.vm)
		_ = os.RemoveAll(filepath.Join(h.devices, pd.vm))
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		log.Printf("disk host: %v", err)
		return
	}
	have := h.attached[pd.vm]
	if have == nil {
		have = map[string]string{}
		h.attached[pd.vm] = have
	}
	for id, target := range have {
		if _, keep := pd.disks[id]; !keep {
			removeLinks(dir, id)
			h.release(target)
			delete(have, id)
		}
	}
	for id, flat := range pd.disks {
		if _, ok := have[id]; ok {
			continue
		}
		target := flat
		if h.useLoop {
			out, err := exec.Command("losetup", "--find", "--show", flat).Output()
			if err != nil {
				log.Printf("disk host: losetup %s: %v; linking the file instead", flat, err)
			} else {
				target = strings.TrimSpace(string(out))
			}
		}
		for _, name := range linkNames(id) {
			tmp := filepath.Join(dir, "."+name+".tmp")
			_ = os.Remove(tmp)
			if err := os.Symlink(target, tmp); err == nil {
				_ = os.Rename(tmp, filepath.Join(dir, name))
			}
		}
		have[id] = target
	}
}

// linkNames are udev's names for a SCSI disk with an NAA identifier (60-persistent-storage.rules).
func linkNames(id string) []string { return []string{"wwn-0x" + id, "scsi-3" + id} }

func removeLinks(dir, id string) {
	for _, name := range linkNames(id) {
		_ = os.Remove(filepath.Join(dir, name))
	}
}

func (h *diskHost) release(target string) {
	if strings.HasPrefix(target, "/dev/loop") {
		if err := exec.Command("losetup", "--detach", target).Run(); err != nil {
			log.Printf("disk host: losetup --detach %s: %v", target, err)
		}
	}
}

// removeAll detaches every device and removes the links (at shutdown).
func (h *diskHost) removeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopped = true
	for vm, have := range h.attached {
		dir := filepath.Join(h.devices, vm, "by-id")
		for id, target := range have {
			removeLinks(dir, id)
			h.release(target)
		}
		delete(h.attached, vm)
	}
}
