/*
 * A UEFI application that misuses boot services on purpose and prints the status of each call as
 * "case=0x...". It keeps going after every error, then leaves boot services with a wrong map key, retries with
 * the right one, and calls boot services through the pointers it cached before ExitBootServices. It returns
 * the status of that last call. The expected statuses (edk2's) are in tests/hostile/test_misbehaving_binaries.py.
 */
#include "efi.h"

static const unsigned char not_a_pe[64] = "this is not a PE image";

EFI_STATUS efi_main(EFI_HANDLE image, SYSTEM_TABLE *system_table) {
  ALLOCATE_PAGES allocate_pages;
  FREE_PAGES free_pages;
  ALLOCATE_POOL allocate_pool;
  FREE_POOL free_pool;
  GET_MEMORY_MAP get_memory_map;
  EXIT_BOOT_SERVICES exit_boot_services;
  UINT64 address, unaccepted, firmware_data;
  void *pool = 0, *stack_var = &address;
  UINTN size, key, dsize;
  UINT32 version;
  EFI_HANDLE child = 0;

  gST = system_table;
  allocate_pages = BS(gST, BS_ALLOCATE_PAGES, ALLOCATE_PAGES);
  free_pages = BS(gST, BS_FREE_PAGES, FREE_PAGES);
  allocate_pool = BS(gST, BS_ALLOCATE_POOL, ALLOCATE_POOL);
  free_pool = BS(gST, BS_FREE_POOL, FREE_POOL);
  get_memory_map = BS(gST, BS_GET_MEMORY_MAP, GET_MEMORY_MAP);
  exit_boot_services = BS(gST, BS_EXIT_BOOT_SERVICES, EXIT_BOOT_SERVICES);
  print("misuse app: start\r\n");

  /* Pool. */
  report("free_pool_null", free_pool(0));
  allocate_pool(EFI_LOADER_DATA, 16, &pool);
  report("free_pool_first", free_pool(pool));
  report("free_pool_double", free_pool(pool));
  report("free_pool_stack", free_pool(stack_var));
  allocate_pool(EFI_LOADER_DATA, 64, &pool);
  report("free_pool_interior", free_pool((unsigned char *)pool + 8));
  report("allocate_pool_null_buffer", allocate_pool(EFI_LOADER_DATA, 16, 0));
  report("allocate_pool_unaccepted_type", allocate_pool(EFI_UNACCEPTED_MEMORY_TYPE, 16, &pool));
  report("allocate_pool_huge", allocate_pool(EFI_LOADER_DATA, 1ULL << 62, &pool));

  /* Pages. */
  address = 0;
  report("allocate_pages_bad_type", allocate_pages(7, EFI_LOADER_DATA, 1, &address));
  report("allocate_pages_unaccepted_type", allocate_pages(ALLOCATE_ANY_PAGES, EFI_UNACCEPTED_MEMORY_TYPE, 1, &address));
  allocate_pages(ALLOCATE_ANY_PAGES, EFI_LOADER_DATA, 1, &address);
  report("free_pages_unaligned", free_pages(address + 8, 1));
  report("free_pages_first", free_pages(address, 1));
  report("free_pages_double", free_pages(address, 1));
  key = get_map();
  unaccepted = first_of_type(EFI_UNACCEPTED_MEMORY_TYPE);
  firmware_data = first_of_type(EFI_BOOT_SERVICES_DATA);
  report("unaccepted_address", unaccepted);
  report("free_pages_unaccepted", free_pages(unaccepted, 1));
  address = unaccepted;
  report("allocate_address_unaccepted", allocate_pages(ALLOCATE_ADDRESS, EFI_LOADER_DATA, 1, &address));
  address = firmware_data;
  report("allocate_address_firmware_data", allocate_pages(ALLOCATE_ADDRESS, EFI_LOADER_DATA, 1, &address));
  address = 0xE0000000ULL; /* the 32-bit PCI hole: no RAM */
  report("allocate_address_pci_hole", allocate_pages(ALLOCATE_ADDRESS, EFI_LOADER_DATA, 1, &address));
  address = 0xFFC84000ULL; /* the firmware's BFV */
  report("allocate_address_firmware_volume", allocate_pages(ALLOCATE_ADDRESS, EFI_LOADER_DATA, 1, &address));
  address = 0;
  report("allocate_address_zero", allocate_pages(ALLOCATE_ADDRESS, EFI_LOADER_DATA, 1, &address));
  address = 0x100000; /* MaxAddress below every free range large enough */
  report("allocate_max_address_too_low", allocate_pages(ALLOCATE_MAX_ADDRESS, EFI_LOADER_DATA, 0x1000, &address));

  /* Memory map. */
  report("get_memory_map_null_size", get_memory_map(0, map_buffer, &key, &dsize, &version));
  size = 0;
  report("get_memory_map_size_0", get_memory_map(&size, map_buffer, &key, &dsize, &version));
  report("get_memory_map_size_0_needed", size);
  size = sizeof(map_buffer);
  report("get_memory_map_null_buffer", get_memory_map(&size, 0, &key, &dsize, &version));

  /* Images. */
  report("load_image_not_a_pe", BS(gST, BS_LOAD_IMAGE, LOAD_IMAGE)(0, image, 0, (void *)not_a_pe,
                                                                 sizeof(not_a_pe), &child));
  report("load_image_size_0", BS(gST, BS_LOAD_IMAGE, LOAD_IMAGE)(0, image, 0, (void *)not_a_pe, 0, &child));
  report("load_image_no_path_no_buffer", BS(gST, BS_LOAD_IMAGE, LOAD_IMAGE)(0, image, 0, 0, 0, &child));
  {
    /* VenHw(nothing installs it)/End: no file system, no LoadFile2, no LoadFile */
    static unsigned char nowhere[24] = {1, 4, 20, 0, 0x9a, 0x8b, 0x7c, 0x6d, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                        0x7f, 0xff, 4, 0};
    report("load_image_unknown_path", BS(gST, BS_LOAD_IMAGE, LOAD_IMAGE)(0, image, nowhere, 0, 0, &child));
  }
  report("load_image_bad_parent", BS(gST, BS_LOAD_IMAGE, LOAD_IMAGE)(0, (EFI_HANDLE)0x1234, 0,
                                                                   (void *)not_a_pe, sizeof(not_a_pe), &child));
  report("start_image_unknown", BS(gST, BS_START_IMAGE, START_IMAGE)((EFI_HANDLE)0x1234, 0, 0));
  report("exit_other_image", BS(gST, BS_EXIT, EXIT)((EFI_HANDLE)0x1234, 0, 0, 0));

  /* ExitBootServices with a stale key, then the retry a loader must make with a fresh map. */
  key = get_map();
  report("exit_boot_services_wrong_key", exit_boot_services(image, key + 1));
  key = get_map();
  print("misuse app: leaving boot services\r\n");
  if (exit_boot_services(image, key) != EFI_SUCCESS)
    return EFI_ERROR_BIT | 0x55;
  /* From here on no console: the pointers cached above are all that is left. */
  free_pool(pool);
  get_memory_map(&size, map_buffer, &key, &dsize, &version);
  return allocate_pool(EFI_LOADER_DATA, 16, &pool);
}
