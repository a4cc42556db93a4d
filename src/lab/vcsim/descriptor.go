package main

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"reflect"
	"strings"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// CreateDescriptor answers OvfManager.CreateDescriptor for a VM: an OVF 1.0 envelope of its config whose
// References are the files the client downloaded from the export lease (cdp.ovfFiles).
func (e *exporter) CreateDescriptor(ctx *simulator.Context, req *types.CreateDescriptor) soap.HasFault {
	body := new(methods.CreateDescriptorBody)
	vm, fault := findVM(ctx, req.Obj)
	if fault != nil {
		body.Fault_ = fault
		return body
	}
	var desc string
	var err error
	ctx.WithLock(vm, func() { desc, err = vmDescriptor(ctx, vm, req.Cdp) })
	if err != nil {
		body.Fault_ = simulator.Fault(err.Error(), &types.InvalidArgument{InvalidProperty: "cdp"})
		return body
	}
	body.Res = &types.CreateDescriptorResponse{Returnval: types.OvfCreateDescriptorResult{OvfDescriptor: desc}}
	return body
}

// ovfWriter builds the envelope; values go through esc, names are fixed.
type ovfWriter struct{ bytes.Buffer }

func esc(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return strings.ReplaceAll(b.String(), `"`, "&quot;")
}

func (w *ovfWriter) line(indent int, format string, args ...interface{}) {
	w.WriteString(strings.Repeat("  ", indent))
	fmt.Fprintf(w, format, args...)
	w.WriteByte('\n')
}

// item writes one VirtualHardwareSection Item with rasd fields in the order given, then vmw:Config entries.
func (w *ovfWriter) item(fields [][2]string, configs ...[2]string) {
	w.line(3, "<Item>")
	for _, f := range fields {
		w.line(4, "<rasd:%s>%s</rasd:%s>", f[0], esc(f[1]), f[0])
	}
	for _, c := range configs {
		w.line(4, `<vmw:Config ovf:required="false" vmw:key="%s" vmw:value="%s"/>`, esc(c[0]), esc(c[1]))
	}
	w.line(3, "</Item>")
}

// capacityUnits gives the capacity in the largest binary unit that divides it, as vCenter writes it.
func capacityUnits(bytes int64) (int64, string) {
	for _, u := range []struct {
		shift uint
		name  string
	}{{30, "byte * 2^30"}, {20, "byte * 2^20"}, {10, "byte * 2^10"}} {
		if bytes%(1<<u.shift) == 0 {
			return bytes >> u.shift, u.name
		}
	}
	return bytes, "byte"
}

// controllerRasd gives a controller's ResourceType, ResourceSubType and label as vCenter writes them.
func controllerRasd(c types.BaseVirtualDevice) (resourceType, subType, label string, ok bool) {
	switch c.(type) {
	case *types.VirtualLsiLogicController:
		return "6", "lsilogic", "SCSI controller", true
	case *types.VirtualLsiLogicSASController:
		return "6", "lsilogicsas", "SCSI controller", true
	case *types.VirtualBusLogicController:
		return "6", "buslogic", "SCSI controller", true
	case *types.ParaVirtualSCSIController:
		return "6", "VirtualSCSI", "SCSI controller", true
	case *types.VirtualIDEController:
		return "5", "", "IDE", true
	case *types.VirtualAHCIController:
		return "20", "vmware.sata.ahci", "SATA controller", true
	case *types.VirtualNVMEController:
		return "20", "vmware.nvme.controller", "NVME controller", true
	}
	return "", "", "", false
}

func nicSubType(d types.BaseVirtualDevice) string {
	switch d.(type) {
	case *types.VirtualVmxnet3:
		return "VmxNet3"
	case *types.VirtualE1000e:
		return "E1000e"
	case *types.VirtualE1000:
		return "E1000"
	case *types.VirtualPCNet32:
		return "PCNet32"
	case *types.VirtualVmxnet2:
		return "VmxNet2"
	}
	return strings.TrimPrefix(reflect.TypeOf(d).Elem().Name(), "Virtual")
}

func nicNetwork(ctx *simulator.Context, backing types.BaseVirtualDeviceBackingInfo) string {
	switch b := backing.(type) {
	case *types.VirtualEthernetCardNetworkBackingInfo:
		return b.DeviceName
	case *types.VirtualEthernetCardDistributedVirtualPortBackingInfo:
		ref := types.ManagedObjectReference{Type: "DistributedVirtualPortgroup", Value: b.Port.PortgroupKey}
		if pg, ok := ctx.Map.Get(ref).(*simulator.DistributedVirtualPortgroup); ok {
			return pg.Name
		}
		return b.Port.PortgroupKey
	case *types.VirtualEthernetCardOpaqueNetworkBackingInfo:
		return b.OpaqueNetworkId
	}
	return ""
}

func vmDescriptor(ctx *simulator.Context, vm *simulator.VirtualMachine, cdp types.OvfCreateDescriptorParams) (string, error) {
	name := cdp.Name
	if name == "" {
		name = vm.Name
	}
	cfg := vm.Config
	devices := object.VirtualDeviceList(cfg.Hardware.Device)
	disks, err := vmDisks(ctx, vm)
	if err != nil {
		return "", err
	}
	files := make(map[string]types.OvfFile, len(cdp.OvfFiles))
	for _, f := range cdp.OvfFiles {
		files[f.DeviceId] = f
	}

	w := &ovfWriter{}
	w.line(0, `<?xml version="1.0" encoding="UTF-8"?>`)
	w.line(0, `<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">`)

	w.line(1, "<References>")
	fileIDs := make(map[string]string)
	for _, d := range disks {
		if f, ok := files[d.deviceKey]; ok {
			fileIDs[d.deviceKey] = fmt.Sprintf("file%d", len(fileIDs)+1)
			w.line(2, `<File ovf:href="%s" ovf:id="%s" ovf:size="%d"/>`, esc(f.Path), fileIDs[d.deviceKey], f.Size)
		}
	}
	w.line(1, "</References>")

	w.line(1, "<DiskSection>")
	w.line(2, "<Info>Virtual disk information</Info>")
	for i, d := range disks {
		capacity, units := capacityUnits(d.capacity)
		fileRef := ""
		if id, ok := fileIDs[d.deviceKey]; ok {
			fileRef = fmt.Sprintf(` ovf:fileRef="%s"`, id)
		}
		w.line(2, `<Disk ovf:capacity="%d" ovf:capacityAllocationUnits="%s" ovf:diskId="vmdisk%d"%s ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>`,
			capacity, units, i+1, fileRef)
	}
	w.line(1, "</DiskSection>")

	nics := devices.SelectByType((*types.VirtualEthernetCard)(nil))
	var networks []string
	seen := make(map[string]bool)
	for _, n := range nics {
		if net := nicNetwork(ctx, n.GetVirtualDevice().Backing); net != "" && !seen[net] {
			seen[net] = true
			networks = append(networks, net)
		}
	}
	w.line(1, "<NetworkSection>")
	w.line(2, "<Info>The list of logical networks</Info>")
	for _, net := range networks {
		w.line(2, `<Network ovf:name="%s">`, esc(net))
		w.line(3, "<Description>The %s network</Description>", esc(net))
		w.line(2, "</Network>")
	}
	w.line(1, "</NetworkSection>")

	w.line(1, `<VirtualSystem ovf:id="%s">`, esc(name))
	w.line(2, "<Info>A virtual machine</Info>")
	w.line(2, "<Name>%s</Name>", esc(name))
	w.line(2, `<OperatingSystemSection ovf:id="1" vmw:osType="%s">`, esc(cfg.GuestId))
	w.line(3, "<Info>The kind of installed guest operating system</Info>")
	if cfg.GuestFullName != "" {
		w.line(3, "<Description>%s</Description>", esc(cfg.GuestFullName))
	}
	w.line(2, "</OperatingSystemSection>")
	w.line(2, "<VirtualHardwareSection>")
	w.line(3, "<Info>Virtual hardware requirements</Info>")
	w.line(3, "<System>")
	w.line(4, "<vssd:ElementName>Virtual Hardware Family</vssd:ElementName>")
	w.line(4, "<vssd:InstanceID>0</vssd:InstanceID>")
	w.line(4, "<vssd:VirtualSystemIdentifier>%s</vssd:VirtualSystemIdentifier>", esc(name))
	w.line(4, "<vssd:VirtualSystemType>%s</vssd:VirtualSystemType>", esc(cfg.Version))
	w.line(3, "</System>")

	cpus := cfg.Hardware.NumCPU
	w.item([][2]string{
		{"AllocationUnits", "hertz * 10^6"},
		{"Description", "Number of Virtual CPUs"},
		{"ElementName", fmt.Sprintf("%d virtual CPU(s)", cpus)},
		{"InstanceID", "1"},
		{"ResourceType", "3"},
		{"VirtualQuantity", fmt.Sprint(cpus)},
	})
	w.item([][2]string{
		{"AllocationUnits", "byte * 2^20"},
		{"Description", "Memory Size"},
		{"ElementName", fmt.Sprintf("%dMB of memory", cfg.Hardware.MemoryMB)},
		{"InstanceID", "2"},
		{"ResourceType", "4"},
		{"VirtualQuantity", fmt.Sprint(cfg.Hardware.MemoryMB)},
	})

	instance := 2
	controllerIDs := make(map[int32]int)
	for _, d := range devices {
		resourceType, subType, label, ok := controllerRasd(d)
		if !ok {
			continue
		}
		instance++
		controllerIDs[d.GetVirtualDevice().Key] = instance
		c := d.(types.BaseVirtualController).GetVirtualController()
		label = fmt.Sprintf("%s %d", label, c.BusNumber)
		fields := [][2]string{
			{"Address", fmt.Sprint(c.BusNumber)},
			{"Description", label},
			{"ElementName", label},
			{"InstanceID", fmt.Sprint(instance)},
		}
		if subType != "" {
			fields = append(fields, [2]string{"ResourceSubType", subType})
		}
		w.item(append(fields, [2]string{"ResourceType", resourceType}))
	}

	for i, d := range disks {
		disk := devices.FindByKey(d.key).(*types.VirtualDisk)
		instance++
		thin := false
		if b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
			thin = boolValue(b.ThinProvisioned)
		}
		w.item([][2]string{
			{"AddressOnParent", fmt.Sprint(*disk.UnitNumber)},
			{"ElementName", fmt.Sprintf("Hard disk %d", i+1)},
			{"HostResource", fmt.Sprintf("ovf:/disk/vmdisk%d", i+1)},
			{"InstanceID", fmt.Sprint(instance)},
			{"Parent", fmt.Sprint(controllerIDs[disk.ControllerKey])},
			{"ResourceType", "17"},
		}, [2]string{"backing.thinProvisioned", fmt.Sprint(thin)})
	}

	for i, n := range nics {
		card := n.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
		instance++
		fields := [][2]string{}
		if card.MacAddress != "" {
			fields = append(fields, [2]string{"Address", card.MacAddress})
		}
		fields = append(fields,
			[2]string{"AddressOnParent", fmt.Sprint(7 + i)},
			[2]string{"AutomaticAllocation", "true"},
			[2]string{"Connection", nicNetwork(ctx, card.Backing)},
			[2]string{"ElementName", fmt.Sprintf("Network adapter %d", i+1)},
			[2]string{"InstanceID", fmt.Sprint(instance)},
			[2]string{"ResourceSubType", nicSubType(n)},
			[2]string{"ResourceType", "10"},
		)
		w.item(fields)
	}

	firmware := cfg.Firmware
	if firmware == "" {
		firmware = string(types.GuestOsDescriptorFirmwareTypeBios)
	}
	w.line(3, `<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="%s"/>`, esc(firmware))
	w.line(2, "</VirtualHardwareSection>")
	w.line(1, "</VirtualSystem>")
	w.line(0, "</Envelope>")
	return w.String(), nil
}

func boolValue(b *bool) bool { return b != nil && *b }
