/*
 * A small UEFI application for lazyaccept's option 3: it allocates more than the firmware accepted up
 * front, and when that fails it looks for the AcceptMemory(Start, Size) boot service that lazyaccept appends
 * after the standard boot services (found by checking BootServices->Hdr.HeaderSize), accepts an unaccepted
 * range from the memory map, and retries.  Exit status: EFI_SUCCESS if the retry succeeded,
 * EFI_UNSUPPORTED if the firmware offers no AcceptMemory, or the failing status.
 *
 * Built in the tests with: x86_64-w64-mingw32-gcc -shared -nostdlib -Wl,--subsystem,10 -e efi_main
 */
typedef unsigned long long UINT64;
typedef UINT64 UINTN;
typedef UINT64 EFI_STATUS;
typedef unsigned int UINT32;
typedef unsigned short CHAR16;
typedef void *EFI_HANDLE;

#define EFI_ERROR_BIT (1ULL << 63)
#define EFI_UNSUPPORTED (EFI_ERROR_BIT | 3)
#define EFI_NOT_FOUND (EFI_ERROR_BIT | 14)
#define ALLOCATE_ANY_PAGES 0
#define EFI_LOADER_DATA 2
#define EFI_UNACCEPTED_MEMORY_TYPE 15
#define WANT_BYTES (512ULL << 20)

typedef struct {
  UINT64 Signature;
  UINT32 Revision, HeaderSize, CRC32, Reserved;
} EFI_TABLE_HEADER;

typedef struct {
  UINT32 Type, Pad;
  UINT64 PhysicalStart, VirtualStart, NumberOfPages, Attribute;
} EFI_MEMORY_DESCRIPTOR;

typedef struct TEXT_OUT {
  void *Reset;
  EFI_STATUS (*OutputString)(struct TEXT_OUT *, CHAR16 *);
} TEXT_OUT;

/* EFI_BOOT_SERVICES as an array of function pointers after the header: index 2 AllocatePages,
 * 4 GetMemoryMap, 44 lazyaccept's AcceptMemory. */
typedef struct {
  EFI_TABLE_HEADER Hdr;
  void *Fn[45];
} BOOT_SERVICES;

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

typedef EFI_STATUS (*ALLOCATE_PAGES)(UINTN, UINTN, UINTN, UINT64 *);
typedef EFI_STATUS (*GET_MEMORY_MAP)(UINTN *, void *, UINTN *, UINTN *, UINT32 *);
typedef EFI_STATUS (*ACCEPT_MEMORY)(UINT64, UINT64);

static unsigned char map_buffer[64 * 1024];
static SYSTEM_TABLE *st;

static void print(const char *s) {
  CHAR16 buf[128];
  UINTN i = 0;
  while (s[i] && i < 126) { buf[i] = (CHAR16)s[i]; i++; }
  buf[i] = 0;
  st->ConOut->OutputString(st->ConOut, buf);
}

EFI_STATUS efi_main(EFI_HANDLE image, SYSTEM_TABLE *system_table) {
  BOOT_SERVICES *bs = system_table->BootServices;
  ALLOCATE_PAGES allocate_pages = (ALLOCATE_PAGES)bs->Fn[2];
  GET_MEMORY_MAP get_memory_map = (GET_MEMORY_MAP)bs->Fn[4];
  UINT64 address = 0, start = 0;
  UINTN size = sizeof(map_buffer), key, desc_size, i;
  UINT32 version;
  EFI_STATUS status;

  st = system_table;
  print("accept-memory app: allocating 512 MiB\r\n");
  status = allocate_pages(ALLOCATE_ANY_PAGES, EFI_LOADER_DATA, WANT_BYTES >> 12, &address);
  if (status == 0) {
    print("accept-memory app: allocation succeeded at once\r\n");
    return 0;
  }
  print("accept-memory app: allocation failed, looking for AcceptMemory\r\n");
  if (bs->Hdr.HeaderSize < sizeof(EFI_TABLE_HEADER) + 45 * sizeof(void *)) {
    print("accept-memory app: the firmware offers no AcceptMemory boot service\r\n");
    return EFI_UNSUPPORTED;
  }
  status = get_memory_map(&size, map_buffer, &key, &desc_size, &version);
  if (status != 0)
    return status;
  for (i = 0; i + desc_size <= size; i += desc_size) {
    EFI_MEMORY_DESCRIPTOR *d = (EFI_MEMORY_DESCRIPTOR *)(map_buffer + i);
    if (d->Type == EFI_UNACCEPTED_MEMORY_TYPE && (d->NumberOfPages << 12) >= WANT_BYTES) {
      start = d->PhysicalStart;
      break;
    }
  }
  if (!start) {
    print("accept-memory app: no unaccepted range large enough\r\n");
    return EFI_NOT_FOUND;
  }
  status = ((ACCEPT_MEMORY)bs->Fn[44])(start, WANT_BYTES);
  if (status != 0) {
    print("accept-memory app: AcceptMemory failed\r\n");
    return status;
  }
  status = allocate_pages(ALLOCATE_ANY_PAGES, EFI_LOADER_DATA, WANT_BYTES >> 12, &address);
  if (status != 0) {
    print("accept-memory app: allocation failed again\r\n");
    return status;
  }
  ((volatile unsigned char *)address)[0] = 1;
  ((volatile unsigned char *)address)[WANT_BYTES - 1] = 1;
  print("accept-memory app: allocation after AcceptMemory succeeded\r\n");
  return 0;
}
