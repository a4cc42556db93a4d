package main

// The host side of SAN transport for the lab's LUN-backed datastores. A SAN proxy writes a disk's blocks
// straight to the LUN; what it needs from the host is the flat extent's block map (VMFS metadata, here the
// ext4 extents of the file on the LUN, from FIEMAP), the zeroing of lazy-zeroed blocks before their first
// write (the host does this for VMFS lazy-zeroed thick disks; here it turns unwritten extents into written
// ones), and, once the proxy is done, that the host drop what it cached of the file so it reads the LUN.
//
//	GET  /vmrestore/san/map?dsName=DS&path=P                    → JSON block map of P's flat extent
//	POST /vmrestore/san/zero?dsName=DS&path=P&offset=O&length=N → zeroes [O, O+N) through the host
//	POST /vmrestore/san/release?dsName=DS&path=P                → host drops its cached pages of P
//	GET  /vmrestore/san/service                                 → 200: this host serves the above
//
// Every request needs a live session's cookie.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

const sanPrefix = "/vmrestore/san/"

type sanExtent struct {
	Logical   int64 `json:"logical"`
	Physical  int64 `json:"physical"`
	Length    int64 `json:"length"`
	Unwritten bool  `json:"unwritten"`
}

type sanMap struct {
	FileSize int64       `json:"fileSize"`
	Extents  []sanExtent `json:"extents"`
}

// sessionUsers maps the key of each session seen on a SOAP call to its user: what SessionIsActive asks.
var sessionUsers sync.Map

// noteSession records the calling session (from the SOAP route, which sees every method call).
func noteSession(ctx *simulator.Context) {
	if ctx.Session != nil && ctx.Session.Key != "" {
		sessionUsers.Store(ctx.Session.Key, ctx.Session.UserName)
	}
}

// sanSession reports whether the request carries the cookie of a live session, as every host request of
// a SAN proxy does: the map names LUN blocks, and zero and release change them.
func sanSession(r *http.Request) bool {
	c, err := r.Cookie(soap.SessionCookieName)
	if err != nil || c.Value == "" {
		return false
	}
	user, ok := sessionUsers.Load(c.Value)
	if !ok {
		return false
	}
	res := simulator.Map.SessionManager().SessionIsActive(simulator.SpoofContext(), &types.SessionIsActive{SessionID: c.Value, UserName: user.(string)})
	body, ok := res.(*methods.SessionIsActiveBody)
	return ok && body.Res != nil && body.Res.Returnval
}

func (h *diskHost) serveSan(w http.ResponseWriter, r *http.Request) {
	if !sanSession(r) {
		http.Error(w, "not authenticated: a vCenter session cookie is required", http.StatusUnauthorized)
		return
	}
	if r.Method == http.MethodGet && r.URL.Path == sanPrefix+"service" {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"blockMap":true,"zero":true,"release":true}` + "\n"))
		return
	}
	file, status, err := h.sanFile(r)
	if err != nil {
		http.Error(w, err.Error(), status)
		return
	}
	switch {
	case r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/map"):
		m, err := fiemap(file)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(m)
	case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/zero"):
		off, err1 := strconv.ParseInt(r.URL.Query().Get("offset"), 10, 64)
		n, err2 := strconv.ParseInt(r.URL.Query().Get("length"), 10, 64)
		if err1 != nil || err2 != nil || off < 0 || n <= 0 {
			http.Error(w, "offset and length: expected non-negative integers", http.StatusBadRequest)
			return
		}
		if err := zeroRange(file, off, n); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/release"):
		if err := dropCache(file); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	default:
		http.Error(w, "unknown SAN request", http.StatusNotFound)
	}
}

// sanFile is the flat extent a request names, on a LUN-backed datastore and inside it.
func (h *diskHost) sanFile(r *http.Request) (string, int, error) {
	q := r.URL.Query()
	ds := q.Get("dsName")
	if !h.sanDatastores[ds] {
		return "", http.StatusNotFound, fmt.Errorf("datastore %q is not LUN-backed", ds)
	}
	root := datastoreURL(simulator.SpoofContext(), ds)
	if root == "" {
		return "", http.StatusNotFound, fmt.Errorf("datastore %q not found", ds)
	}
	rel := filepath.Clean("/" + q.Get("path"))
	if rel == "/" {
		return "", http.StatusBadRequest, fmt.Errorf("path: expected a file on the datastore")
	}
	file := filepath.Join(root, rel)
	if _, err := os.Stat(file); err != nil {
		return "", http.StatusNotFound, err
	}
	return file, 0, nil
}

// fiemap is the file's extent list (FS_IOC_FIEMAP), physical offsets in bytes from the start of the LUN.
func fiemap(file string) (*sanMap, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if err := f.Sync(); err != nil { // delayed allocation: extents are only mapped once written back
		return nil, err
	}
	const (
		fsIocFiemap     = 0xC020660B
		fiemapFlagSync  = 0x1
		extentLast      = 0x1
		extentUnwritten = 0x800
		batch           = 512
	)
	type header struct {
		Start, Length                        uint64
		Flags, Mapped, ExtentCount, Reserved uint32
	}
	type extent struct {
		Logical, Physical, Length uint64
		_                         [2]uint64
		Flags                     uint32
		_                         [3]uint32
	}
	m := &sanMap{FileSize: st.Size(), Extents: []sanExtent{}}
	var start uint64
	for {
		buf := make([]byte, int(unsafe.Sizeof(header{}))+batch*int(unsafe.Sizeof(extent{})))
		hdr := (*header)(unsafe.Pointer(&buf[0]))
		hdr.Start, hdr.Length, hdr.Flags, hdr.ExtentCount = start, ^uint64(0)-start, fiemapFlagSync, batch
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), fsIocFiemap, uintptr(unsafe.Pointer(&buf[0]))); e != 0 {
			return nil, fmt.Errorf("FIEMAP %s: %v", file, e)
		}
		if hdr.Mapped == 0 {
			return m, nil
		}
		exts := unsafe.Slice((*extent)(unsafe.Pointer(&buf[unsafe.Sizeof(header{})])), hdr.Mapped)
		last := false
		for _, x := range exts {
			m.Extents = append(m.Extents, sanExtent{
				Logical:   int64(x.Logical),
				Physical:  int64(x.Physical),
				Length:    int64(x.Length),
				Unwritten: x.Flags&extentUnwritten != 0,
			})
			start = x.Logical + x.Length
			last = last || x.Flags&extentLast != 0
		}
		if last {
			return m, nil
		}
	}
}

// zeroRange writes zeros over [off, off+n) through the filesystem, durably, and drops those pages.
func zeroRange(file string, off, n int64) error {
	f, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	zero := make([]byte, 1<<20)
	for done := int64(0); done < n; {
		k := min(int64(len(zero)), n-done)
		if _, err := f.WriteAt(zero[:k], off+done); err != nil {
			return err
		}
		done += k
	}
	if err := syscall.Fdatasync(int(f.Fd())); err != nil {
		return err
	}
	return fadviseDontNeed(f, off, n)
}

func dropCache(file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	return fadviseDontNeed(f, 0, 0)
}

func fadviseDontNeed(f *os.File, off, n int64) error {
	const dontNeed = 4
	if _, _, e := syscall.Syscall6(syscall.SYS_FADVISE64, f.Fd(), uintptr(off), uintptr(n), dontNeed, 0, 0); e != 0 {
		return fmt.Errorf("fadvise %s: %v", f.Name(), e)
	}
	return nil
}
