package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"strings"
	"sync"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// exportPrefix is below the simulator's /nfc/ so the export disks share the NFC address space, as on ESX.
const exportPrefix = "/nfc/export/"

// exportDisk is one virtual disk of an export lease, as ExportVm found it on the datastore.
type exportDisk struct {
	key       int32  // the VirtualDisk's device key
	deviceKey string // the lease's device URL key, e.g. /vm-42/VirtualLsiLogicController0:0
	targetID  string // disk-0.vmdk
	flatFile  string // the datastore's flat extent
	capacity  int64
	vmdk      string // the stream-optimized VMDK served to the client, once made
	vmdkSize  int64
}

// exportLease is the server side of one HttpNfcLease made by ExportVm.
type exportLease struct {
	ref   types.ManagedObjectReference
	token string
	dir   string
	disks []*exportDisk
}

// exporter adds ExportVm and CreateDescriptor to the simulator and serves the leases' disks over HTTP.
// It is a managed object of its own (Self) that route sends those two methods to.
type exporter struct {
	Self    types.ManagedObjectReference
	scheme  string
	qemuImg string

	mu      sync.Mutex
	byToken map[string]*exportLease
	byLease map[types.ManagedObjectReference]*exportLease
}

func newExporter(scheme, qemuImg string) *exporter {
	return &exporter{
		Self:    types.ManagedObjectReference{Type: "VmrestoreLabExporter", Value: "exporter"},
		scheme:  scheme,
		qemuImg: qemuImg,
		byToken: make(map[string]*exportLease),
		byLease: make(map[types.ManagedObjectReference]*exportLease),
	}
}

func (e *exporter) Reference() types.ManagedObjectReference { return e.Self }

// route is the simulator's method hook. The simulator dispatches a call to the object its _this names
// (a session's own objects first, then the inventory), so the two methods it lacks are sent to the
// exporter by naming it; the request body keeps the real _this. Lease completion and abort release the
// lease's files and go on to the simulator's HttpNfcLease.
func (e *exporter) route(ctx *simulator.Context, m *simulator.Method) (mo.Reference, types.BaseMethodFault) {
	noteSession(ctx)
	switch {
	case m.Name == "ExportVm" && m.This.Type == "VirtualMachine",
		m.Name == "CreateDescriptor" && m.This.Type == "OvfManager":
		if ctx.Map.Get(m.This) != nil {
			m.This = e.Self
		}
	case m.This.Type == "HttpNfcLease" && (m.Name == "HttpNfcLeaseComplete" || m.Name == "HttpNfcLeaseAbort"):
		e.release(m.This)
	}
	return nil, nil
}

func findVM(ctx *simulator.Context, ref types.ManagedObjectReference) (*simulator.VirtualMachine, *soap.Fault) {
	if vm, ok := ctx.Map.Get(ref).(*simulator.VirtualMachine); ok {
		return vm, nil
	}
	return nil, simulator.Fault(fmt.Sprintf("%s is not a virtual machine", ref), &types.ManagedObjectNotFound{Obj: ref})
}

func (e *exporter) ExportVm(ctx *simulator.Context, req *types.ExportVm) soap.HasFault {
	body := new(methods.ExportVmBody)
	vm, fault := findVM(ctx, req.This)
	if fault != nil {
		body.Fault_ = fault
		return body
	}
	var disks []*exportDisk
	ctx.WithLock(vm, func() {
		if vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
			fault = simulator.Fault(fmt.Sprintf("%s is powered on; export needs it powered off", vm.Name), &types.InvalidPowerState{
				RequestedState: types.VirtualMachinePowerStatePoweredOff,
				ExistingState:  vm.Runtime.PowerState,
			})
			return
		}
		var err error
		if disks, err = vmDisks(ctx, vm); err != nil {
			fault = simulator.Fault(err.Error(), &types.FileFault{File: vm.Name})
		}
	})
	if fault != nil {
		body.Fault_ = fault
		return body
	}
	dir, err := os.MkdirTemp("", "vcsim-export-")
	if err != nil {
		body.Fault_ = simulator.Fault(err.Error(), &types.FileFault{File: vm.Name})
		return body
	}

	lease := &simulator.HttpNfcLease{HttpNfcLease: mo.HttpNfcLease{State: types.HttpNfcLeaseStateInitializing}}
	ctx.Session.Put(lease)
	el := &exportLease{ref: lease.Self, token: newToken(), dir: dir, disks: disks}
	e.add(el)

	// As on ESX, the lease is initializing while the disks are prepared and ready once they can be read.
	go e.prepare(ctx, lease, el, vm.Self)

	body.Res = &types.ExportVmResponse{Returnval: lease.Self}
	return body
}

// vmDisks lists the VM's virtual disks in device order with the flat extent behind each.
func vmDisks(ctx *simulator.Context, vm *simulator.VirtualMachine) ([]*exportDisk, error) {
	devices := object.VirtualDeviceList(vm.Config.Hardware.Device)
	var disks []*exportDisk
	for _, d := range devices.SelectByType((*types.VirtualDisk)(nil)) {
		disk := d.(*types.VirtualDisk)
		backing, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo)
		if !ok {
			return nil, fmt.Errorf("disk %d of %s has no file backing", disk.Key, vm.Name)
		}
		var p object.DatastorePath
		if !p.FromString(backing.GetVirtualDeviceFileBackingInfo().FileName) {
			return nil, fmt.Errorf("disk %d of %s: bad file name %q", disk.Key, vm.Name, backing.GetVirtualDeviceFileBackingInfo().FileName)
		}
		root, err := datastoreDir(ctx, vm, p.Datastore)
		if err != nil {
			return nil, err
		}
		controller := devices.FindByKey(disk.ControllerKey)
		if controller == nil || disk.UnitNumber == nil {
			return nil, fmt.Errorf("disk %d of %s has no controller slot", disk.Key, vm.Name)
		}
		bus := int32(0)
		if c, ok := controller.(types.BaseVirtualController); ok {
			bus = c.GetVirtualController().BusNumber
		}
		disks = append(disks, &exportDisk{
			key:       disk.Key,
			deviceKey: fmt.Sprintf("/%s/%s%d:%d", vm.Self.Value, reflect.TypeOf(controller).Elem().Name(), bus, *disk.UnitNumber),
			targetID:  fmt.Sprintf("disk-%d.vmdk", len(disks)),
			flatFile:  filepath.Join(root, strings.TrimSuffix(p.Path, ".vmdk")+"-flat.vmdk"),
			capacity:  diskCapacity(disk),
		})
	}
	return disks, nil
}

func diskCapacity(disk *types.VirtualDisk) int64 {
	if disk.CapacityInBytes > 0 {
		return disk.CapacityInBytes
	}
	return disk.CapacityInKB * 1024
}

func datastoreDir(ctx *simulator.Context, vm *simulator.VirtualMachine, name string) (string, error) {
	for _, ref := range vm.Datastore {
		if ds, ok := ctx.Map.Get(ref).(*simulator.Datastore); ok && ds.Name == name {
			return ds.Info.GetDatastoreInfo().Url, nil
		}
	}
	return "", fmt.Errorf("datastore %q of %s not found", name, vm.Name)
}

// prepare makes each disk's stream-optimized VMDK, then marks the lease ready (or in error).
func (e *exporter) prepare(ctx *simulator.Context, lease *simulator.HttpNfcLease, el *exportLease, entity types.ManagedObjectReference) {
	var urls []types.HttpNfcLeaseDeviceUrl
	var capacityKB int64
	for _, d := range el.disks {
		if err := e.convert(el.dir, d); err != nil {
			log.Printf("export %s: %s", entity.Value, err)
			e.release(el.ref)
			ctx.WithLock(lease, func() {
				ctx.Update(lease, []types.PropertyChange{
					{Name: "state", Val: types.HttpNfcLeaseStateError},
					{Name: "error", Val: &types.LocalizedMethodFault{Fault: &types.FileFault{File: d.flatFile}, LocalizedMessage: err.Error()}},
				})
			})
			return
		}
		capacityKB += d.capacity / 1024
		urls = append(urls, types.HttpNfcLeaseDeviceUrl{
			Key:      d.deviceKey,
			Url:      fmt.Sprintf("%s://*%s", e.scheme, path.Join(exportPrefix, el.token, d.targetID)),
			Disk:     types.NewBool(true),
			TargetId: d.targetID,
			FileSize: d.vmdkSize,
		})
	}
	info := &types.HttpNfcLeaseInfo{
		Lease:                 el.ref,
		Entity:                entity,
		DeviceUrl:             urls,
		TotalDiskCapacityInKB: capacityKB,
		LeaseTimeout:          300,
	}
	ctx.WithLock(lease, func() {
		ctx.Update(lease, []types.PropertyChange{
			{Name: "info", Val: info},
			{Name: "state", Val: types.HttpNfcLeaseStateReady},
		})
	})
}

// convert writes the disk as a stream-optimized VMDK of its full capacity; a flat extent shorter than the
// capacity (vcsim creates them empty) reads as zeros past its end, as the disk does.
func (e *exporter) convert(dir string, d *exportDisk) error {
	src := d.flatFile
	st, err := os.Stat(src)
	switch {
	case err == nil && st.Size() > d.capacity:
		return fmt.Errorf("%s is %d bytes, more than the disk's capacity %d", src, st.Size(), d.capacity)
	case err == nil && st.Size() == d.capacity:
	case err == nil || os.IsNotExist(err):
		// A qcow2 overlay of the capacity, backed by the shorter extent if there is one.
		overlay := filepath.Join(dir, strings.TrimSuffix(d.targetID, ".vmdk")+".qcow2")
		args := []string{"create", "-q", "-f", "qcow2"}
		if err == nil {
			args = append(args, "-b", src, "-F", "raw")
		}
		args = append(args, overlay, fmt.Sprint(d.capacity))
		if out, err := exec.Command(e.qemuImg, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("qemu-img %s: %s: %s", strings.Join(args, " "), err, out)
		}
		src = overlay
	default:
		return err
	}
	format := "raw"
	if src != d.flatFile {
		format = "qcow2"
	}
	out := filepath.Join(dir, d.targetID)
	args := []string{"convert", "-q", "-f", format, "-O", "vmdk", "-o", "subformat=streamOptimized", src, out}
	if msg, err := exec.Command(e.qemuImg, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("qemu-img %s: %s: %s", strings.Join(args, " "), err, msg)
	}
	if src != d.flatFile {
		_ = os.Remove(src)
	}
	vst, err := os.Stat(out)
	if err != nil {
		return err
	}
	e.mu.Lock()
	d.vmdk, d.vmdkSize = out, vst.Size()
	e.mu.Unlock()
	return nil
}

// serveDisk answers GET /nfc/export/<token>/<disk>: the token is the lease's, as NFC needs no session.
func (e *exporter) serveDisk(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "export disks are read-only", http.StatusMethodNotAllowed)
		return
	}
	token, name := path.Split(strings.TrimPrefix(r.URL.Path, exportPrefix))
	vmdk := ""
	e.mu.Lock()
	if el := e.byToken[strings.TrimSuffix(token, "/")]; el != nil {
		for _, d := range el.disks {
			if d.targetID == name {
				vmdk = d.vmdk
			}
		}
	}
	e.mu.Unlock()
	if vmdk != "" {
		f, err := os.Open(vmdk)
		if err != nil {
			http.NotFound(w, r)
			return
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		http.ServeContent(w, r, name, st.ModTime(), f)
		return
	}
	http.NotFound(w, r)
}

func (e *exporter) add(el *exportLease) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.byToken[el.token] = el
	e.byLease[el.ref] = el
}

// release forgets a lease and removes its VMDKs; an open download keeps its file until it ends.
func (e *exporter) release(ref types.ManagedObjectReference) {
	e.mu.Lock()
	el := e.byLease[ref]
	delete(e.byLease, ref)
	if el != nil {
		delete(e.byToken, el.token)
	}
	e.mu.Unlock()
	if el != nil {
		_ = os.RemoveAll(el.dir)
	}
}

func (e *exporter) removeAll() {
	e.mu.Lock()
	refs := make([]types.ManagedObjectReference, 0, len(e.byLease))
	for ref := range e.byLease {
		refs = append(refs, ref)
	}
	e.mu.Unlock()
	for _, ref := range refs {
		e.release(ref)
	}
}

func newToken() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
