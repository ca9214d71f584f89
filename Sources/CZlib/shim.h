#ifndef CNN_DIST_CZLIB_SHIM_H
#define CNN_DIST_CZLIB_SHIM_H
#include <zlib.h>
#endif
