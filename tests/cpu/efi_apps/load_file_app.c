/*
 * A small UEFI application for LoadImage's paths other than a file system: it installs an
 * EFI_LOAD_FILE2_PROTOCOL and an EFI_LOAD_FILE_PROTOCOL of its own, each on a handle with a vendor media
 * device path, whose LoadFile hands out the application's own loaded bytes, then calls LoadImage:
 *   A: from a buffer with no device path (the firmware names the image by its CodeView record),
 *   B: BootPolicy FALSE on the LoadFile2 handle's path + \lf2.efi (served by LoadFile2: size probe, then read),
 *   C: BootPolicy TRUE on that path (LoadFile2 is not asked: EFI_NOT_FOUND),
 *   D: BootPolicy TRUE on the LoadFile handle's path (served by LoadFile, BootPolicy passed on),
 *   E: a path no handle matches (EFI_NOT_FOUND).
 * It prints one line per case: "X status=<hex> calls=<n> policy=<n>".
 *
 * Built in the tests with: x86_64-w64-mingw32-gcc -shared -nostdlib -Wl,--subsystem,10 -e efi_main
 *   -Wl,--build-id -Wl,--pdb=load_file_app (a CodeView record naming the module)
 */
typedef unsigned long long UINT64;
typedef UINT64 UINTN;
typedef UINT64 EFI_STATUS;
typedef unsigned int UINT32;
typedef unsigned short CHAR16;
typedef unsigned char UINT8;
typedef void *EFI_HANDLE;

#define EFI_ERROR_BIT (1ULL << 63)
#define EFI_BUFFER_TOO_SMALL (EFI_ERROR_BIT | 5)

typedef struct { UINT32 a; unsigned short b, c; UINT8 d[8]; } EFI_GUID;
static EFI_GUID LOADED_IMAGE = {0x5B1B31A1, 0x9562, 0x11d2, {0x8E, 0x3F, 0x00, 0xA0, 0xC9, 0x69, 0x72, 0x3B}};
static EFI_GUID DEVICE_PATH = {0x09576e91, 0x6d3f, 0x11d2, {0x8e, 0x39, 0x00, 0xa0, 0xc9, 0x69, 0x72, 0x3b}};
static EFI_GUID LOAD_FILE2 = {0x4006c0c1, 0xfcb3, 0x403e, {0x99, 0x6d, 0x4a, 0x6c, 0x87, 0x24, 0xe0, 0x6d}};
static EFI_GUID LOAD_FILE = {0x56ec3091, 0x954c, 0x11d2, {0x8e, 0x3f, 0x00, 0xa0, 0xc9, 0x69, 0x72, 0x3b}};

typedef struct { UINT64 Signature; UINT32 Revision, HeaderSize, CRC32, Reserved; } EFI_TABLE_HEADER;
typedef struct TEXT_OUT { void *Reset; EFI_STATUS (*OutputString)(struct TEXT_OUT *, CHAR16 *); } TEXT_OUT;
/* EFI_BOOT_SERVICES as function pointers after the header: 5 AllocatePool, 13 InstallProtocolInterface, 16 HandleProtocol,
 * 22 LoadImage, 25 UnloadImage. */
typedef struct { EFI_TABLE_HEADER Hdr; void *Fn[44]; } BOOT_SERVICES;
typedef struct {
  EFI_TABLE_HEADER Hdr;
  CHAR16 *FirmwareVendor;
  UINT32 FirmwareRevision;
  EFI_HANDLE ConsoleInHandle;
  void *ConIn;
  EFI_HANDLE ConsoleOutHandle;
  TEXT_OUT *ConOut;
  EFI_HANDLE StandardErrorHandle;
  void *StdErr;
  void *RuntimeServices;
  BOOT_SERVICES *BootServices;
} SYSTEM_TABLE;
typedef struct {
  UINT32 Revision;
  EFI_HANDLE ParentHandle;
  SYSTEM_TABLE *SystemTable;
  EFI_HANDLE DeviceHandle;
  void *FilePath;
  void *Reserved;
  UINT32 LoadOptionsSize;
  void *LoadOptions;
  UINT8 *ImageBase;
  UINT64 ImageSize;
} LOADED_IMAGE_PROTOCOL;

typedef struct LOAD_FILE_PROTOCOL {
  EFI_STATUS (*LoadFile)(struct LOAD_FILE_PROTOCOL *, void *, UINT8, UINTN *, void *);
} LOAD_FILE_PROTOCOL;

/* VenMedia(guid) / [File(name)] / End */
typedef struct __attribute__((packed)) {
  UINT8 type, subtype; unsigned short length; EFI_GUID guid;
  UINT8 ftype, fsubtype; unsigned short flength; CHAR16 name[9];
  UINT8 etype, esubtype; unsigned short elength;
} FILE_ON_VENDOR;
typedef struct __attribute__((packed)) {
  UINT8 type, subtype; unsigned short length; EFI_GUID guid;
  UINT8 etype, esubtype; unsigned short elength;
} VENDOR;

static SYSTEM_TABLE *st;
static LOADED_IMAGE_PROTOCOL *self;
static int calls, last_policy;

static UINT32 u32(const UINT8 *p) { return p[0] | p[1] << 8 | p[2] << 16 | (UINT32)p[3] << 24; }

/* The application's file again, from its loaded image: the headers, then each section's bytes from its
 * VirtualAddress back to its PointerToRawData (a .bss with no file bytes shifts the later ones). With
 * `out` 0, only the file's size. */
static UINT64 as_file(UINT8 *out) {
  const UINT8 *base = self->ImageBase, *pe = base + u32(base + 0x3c);
  int sections = pe[6] | pe[7] << 8;
  const UINT8 *header = pe + 24 + (pe[20] | pe[21] << 8);
  UINT64 size = u32(pe + 24 + 60);  /* SizeOfHeaders */
  if (out)
    for (UINT64 i = 0; i < size; i++) out[i] = base[i];
  for (int s = 0; s < sections; s++, header += 40) {
    UINT32 va = u32(header + 12), raw = u32(header + 16), at = u32(header + 20);
    if (!raw) continue;
    if (out)
      for (UINT32 i = 0; i < raw; i++) out[at + i] = base[va + i];
    if (at + raw > size) size = at + raw;
  }
  return size;
}

static EFI_STATUS serve(LOAD_FILE_PROTOCOL *this, void *path, UINT8 policy, UINTN *size, void *buffer) {
  UINT64 need = as_file(0);
  calls++;
  last_policy = policy;
  if (buffer == 0 || *size < need) {
    *size = need;
    return EFI_BUFFER_TOO_SMALL;
  }
  as_file(buffer);
  *size = need;
  return 0;
}

static LOAD_FILE_PROTOCOL lf2 = {serve}, lf = {serve};

static void print(const char *text) {
  CHAR16 out[96];
  int i = 0;
  for (; text[i] && i < 94; i++) out[i] = (CHAR16)text[i];
  out[i++] = '\r';
  out[i++] = '\n';
  out[i] = 0;
  st->ConOut->OutputString(st->ConOut, out);
}

static char *hex(char *p, UINT64 v) {
  *p++ = '0';
  *p++ = 'x';
  int started = 0;
  for (int s = 60; s >= 0; s -= 4) {
    int d = (v >> s) & 0xF;
    if (d || started || s == 0) { *p++ = "0123456789abcdef"[d]; started = 1; }
  }
  return p;
}

static void report(char which, EFI_STATUS status) {
  char line[80], *p = line;
  const char *a = " status=", *b = " calls=", *c = " policy=";
  *p++ = which;
  while (*a) *p++ = *a++;
  p = hex(p, status);
  while (*b) *p++ = *b++;
  p = hex(p, calls);
  while (*c) *p++ = *c++;
  p = hex(p, last_policy);
  *p = 0;
  print(line);
  calls = last_policy = 0;
}

typedef EFI_STATUS (*LOAD_IMAGE)(UINT8, EFI_HANDLE, void *, void *, UINTN, EFI_HANDLE *);
typedef EFI_STATUS (*UNLOAD_IMAGE)(EFI_HANDLE);
typedef EFI_STATUS (*INSTALL)(EFI_HANDLE *, EFI_GUID *, UINT32, void *);
typedef EFI_STATUS (*ALLOCATE_POOL)(UINT32, UINTN, void **);
typedef EFI_STATUS (*HANDLE_PROTOCOL)(EFI_HANDLE, EFI_GUID *, void **);

EFI_STATUS efi_main(EFI_HANDLE image, SYSTEM_TABLE *system_table) {
  st = system_table;
  BOOT_SERVICES *bs = st->BootServices;
  LOAD_IMAGE load = (LOAD_IMAGE)bs->Fn[22];
  UNLOAD_IMAGE unload = (UNLOAD_IMAGE)bs->Fn[25];
  INSTALL install = (INSTALL)bs->Fn[13];
  EFI_STATUS status = ((HANDLE_PROTOCOL)bs->Fn[16])(image, &LOADED_IMAGE, (void **)&self);
  if (status) return status;

  static FILE_ON_VENDOR on_lf2 = {4, 3, 20, {0x1a2b3c4d, 1, 2, {3, 4, 5, 6, 7, 8, 9, 10}},
                                  4, 4, 22, {'\\', 'l', 'f', '2', '.', 'e', 'f', 'i', 0}, 0x7f, 0xff, 4};
  static VENDOR lf2_device = {4, 3, 20, {0x1a2b3c4d, 1, 2, {3, 4, 5, 6, 7, 8, 9, 10}}, 0x7f, 0xff, 4};
  static VENDOR lf_device = {4, 3, 20, {0x1a2b3c4e, 1, 2, {3, 4, 5, 6, 7, 8, 9, 10}}, 0x7f, 0xff, 4};
  static VENDOR nowhere = {4, 3, 20, {0x1a2b3c4f, 1, 2, {3, 4, 5, 6, 7, 8, 9, 10}}, 0x7f, 0xff, 4};
  EFI_HANDLE h2 = 0, h1 = 0, loaded = 0;
  install(&h2, &DEVICE_PATH, 0, &lf2_device);
  install(&h2, &LOAD_FILE2, 0, &lf2);
  install(&h1, &DEVICE_PATH, 0, &lf_device);
  install(&h1, &LOAD_FILE, 0, &lf);

  UINT8 *file = 0;
  status = ((ALLOCATE_POOL)bs->Fn[5])(2 /* EfiLoaderData */, as_file(0), (void **)&file);
  if (status) return status;
  as_file(file);
  status = load(0, image, 0, file, as_file(0), &loaded);
  report('A', status);
  if (!status) unload(loaded);
  status = load(0, image, &on_lf2, 0, 0, &loaded);
  report('B', status);
  if (!status) unload(loaded);
  status = load(1, image, &on_lf2, 0, 0, &loaded);
  report('C', status);
  status = load(1, image, &lf_device, 0, 0, &loaded);
  report('D', status);
  if (!status) unload(loaded);
  status = load(0, image, &nowhere, 0, 0, &loaded);
  report('E', status);
  return 0;
}
