# Turn one file into a C source holding its bytes as a string (agent/CMakeLists.txt runs this at
# build time for each REPL driver, so the static agent reads nothing from disk):
#
#   cmake -DIN=<file> -DOUT=<file.c> -DNAME=<symbol> -DHEADER=<declarations.h> -P embed.cmake
#
# defines `const char NAME[]` (the bytes and a terminating NUL: a driver is passed to its
# interpreter as one argv string) and `const size_t NAME_len` (the byte count, without the NUL),
# as HEADER declares them. A file holding a NUL byte is refused: it could not be an argv string.
foreach(var IN ITEMS IN OUT NAME HEADER)
    if(NOT DEFINED ${var})
        message(FATAL_ERROR "embed.cmake: -D${var}=... is required")
    endif()
endforeach()

file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" digits)
math(EXPR size "${digits} / 2")
# Every byte as a \xNN escape (an escape ends at the next backslash, so none runs into the next
# character, and any byte value is fine in a string literal), 16 bytes to a line.
set(lines "")
set(at 0)
while(at LESS digits)
    string(SUBSTRING "${hex}" ${at} 32 chunk)
    string(REGEX REPLACE "(..)" "\\\\x\\1" chunk "${chunk}")
    if(chunk MATCHES "\\\\x00")
        message(FATAL_ERROR "embed.cmake: ${IN} contains a NUL byte")
    endif()
    string(APPEND lines "    \"${chunk}\"\n")
    math(EXPR at "${at} + 32")
endwhile()

get_filename_component(in_name "${IN}" NAME)
file(WRITE "${OUT}"
     "/* Generated from ${in_name} by agent/repl/embed.cmake: edit the driver, not this file. */\n"
     "#include \"${HEADER}\"\n"
     "\n"
     "const char ${NAME}[] =\n"
     "${lines}"
     "    \"\";\n"
     "const size_t ${NAME}_len = ${size};\n")
