#ifndef CNN_DIST_CJPEG_SHIM_H
#define CNN_DIST_CJPEG_SHIM_H
// libjpeg-turbo's TurboJPEG API (libturbojpeg0-dev). TurboJPEG catches libjpeg's
// longjmp errors itself and reports them as return codes, so no shim code is needed.
#include <stddef.h>
#include <turbojpeg.h>
#endif
