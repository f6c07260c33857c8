/*
 * The few UEFI declarations lazyaccept's hostile test applications need (UEFI 2.10, edk2 MdePkg names).
 * Built in the tests with Debian's mingw-w64: x86_64-w64-mingw32-gcc -shared -nostdlib -Wl,--subsystem,10
 * -e efi_main; see tests/hostile/conftest.py.
 */
#ifndef HOSTILE_EFI_H
#define HOSTILE_EFI_H

typedef unsigned long long UINT64;
typedef UINT64 UINTN;
typedef UINT64 EFI_STATUS;
typedef unsigned int UINT32;
typedef unsigned short CHAR16;
typedef unsigned char UINT8;
typedef void *EFI_HANDLE;

#define EFI_ERROR_BIT (1ULL << 63)
#define EFI_SUCCESS 0ULL
#define EFI_INVALID_PARAMETER (EFI_ERROR_BIT | 2)
#define EFI_UNSUPPORTED (EFI_ERROR_BIT | 3)
#define EFI_NOT_FOUND (EFI_ERROR_BIT | 14)

#define ALLOCATE_ANY_PAGES 0
#define ALLOCATE_MAX_ADDRESS 1
#define ALLOCATE_ADDRESS 2
#define EFI_LOADER_DATA 2
#define EFI_BOOT_SERVICES_DATA 4
#define EFI_CONVENTIONAL_MEMORY 7
#define EFI_UNACCEPTED_MEMORY_TYPE 15

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

/* EFI_BOOT_SERVICES as function pointers after the header, indexed as in the UEFI specification; index 44 is
 * lazyaccept's option-3 AcceptMemory, present only when Hdr.HeaderSize says so. */
enum {
  BS_ALLOCATE_PAGES = 2, BS_FREE_PAGES = 3, BS_GET_MEMORY_MAP = 4, BS_ALLOCATE_POOL = 5, BS_FREE_POOL = 6,
  BS_LOAD_IMAGE = 22, BS_START_IMAGE = 23, BS_EXIT = 24, BS_EXIT_BOOT_SERVICES = 26, BS_STALL = 28,
  BS_SET_MEM = 42, BS_ACCEPT_MEMORY = 44
};

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
typedef EFI_STATUS (*FREE_PAGES)(UINT64, UINTN);
typedef EFI_STATUS (*GET_MEMORY_MAP)(UINTN *, void *, UINTN *, UINTN *, UINT32 *);
typedef EFI_STATUS (*ALLOCATE_POOL)(UINTN, UINTN, void **);
typedef EFI_STATUS (*FREE_POOL)(void *);
typedef EFI_STATUS (*LOAD_IMAGE)(UINT8, EFI_HANDLE, void *, void *, UINTN, EFI_HANDLE *);
typedef EFI_STATUS (*START_IMAGE)(EFI_HANDLE, UINTN *, CHAR16 **);
typedef EFI_STATUS (*EXIT)(EFI_HANDLE, EFI_STATUS, UINTN, CHAR16 *);
typedef EFI_STATUS (*EXIT_BOOT_SERVICES)(EFI_HANDLE, UINTN);
typedef EFI_STATUS (*STALL)(UINTN);
typedef void (*SET_MEM)(void *, UINTN, UINT8);
typedef EFI_STATUS (*ACCEPT_MEMORY)(UINT64, UINT64);

#define BS(st, index, type) ((type)(st)->BootServices->Fn[index])

static SYSTEM_TABLE *gST;

static void print(const char *s) {
  CHAR16 buf[160];
  UINTN i = 0;
  while (s[i] && i < 158) { buf[i] = (CHAR16)s[i]; i++; }
  buf[i] = 0;
  gST->ConOut->OutputString(gST->ConOut, buf);
}

/* "name=0x8000000000000002\r\n": the form tests/hostile/conftest.py parses. */
static void report(const char *name, UINT64 value) {
  char line[120];
  UINTN i = 0, k;
  while (name[i] && i < 80) { line[i] = name[i]; i++; }
  line[i++] = '=';
  line[i++] = '0';
  line[i++] = 'x';
  for (k = 0; k < 16; k++) line[i++] = "0123456789abcdef"[(value >> (60 - 4 * k)) & 0xF];
  line[i++] = '\r';
  line[i++] = '\n';
  line[i] = 0;
  print(line);
}

/* The memory map into a static buffer; returns the map key (0 on failure). */
static unsigned char map_buffer[64 * 1024];
static UINTN map_size, desc_size;

static UINTN get_map(void) {
  UINTN key = 0;
  UINT32 version;
  map_size = sizeof(map_buffer);
  if (BS(gST, BS_GET_MEMORY_MAP, GET_MEMORY_MAP)(&map_size, map_buffer, &key, &desc_size, &version) != EFI_SUCCESS)
    return 0;
  return key;
}

/* Start of the first descriptor of a type, or 0. */
static UINT64 first_of_type(UINT32 type) {
  UINTN i;
  for (i = 0; i + desc_size <= map_size; i += desc_size) {
    EFI_MEMORY_DESCRIPTOR *d = (EFI_MEMORY_DESCRIPTOR *)(map_buffer + i);
    if (d->Type == type)
      return d->PhysicalStart;
  }
  return 0;
}

/* TDG.MEM.PAGE.ACCEPT (TDCALL leaf 6) of one 4K page, as a guest that keeps no record of its own would. */
static UINT64 tdcall_accept_4k(UINT64 gpa) {
  UINT64 rax = 6, rcx = gpa;
  __asm__ volatile(".byte 0x66, 0x0f, 0x01, 0xcc" : "+a"(rax), "+c"(rcx) : : "rdx", "r8", "r9", "r10", "r11", "memory");
  return rax;
}

#endif
