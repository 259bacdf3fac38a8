# The wire: what an agent reads from a client and a client from an agent (tests/fuzz/README.md).

# Frame decoder + message decoder + params accessors (corpus: raw frames behind a split byte).
sbx_fuzz_target(NAME decode SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_decode.c
                LIBS sbxproto PkgConfig::MSGPACK CORPUS ${CMAKE_CURRENT_SOURCE_DIR}/corpus/frame)

# agent/netproc.c's /proc/net table reader (net.listening).
sbx_fuzz_target(NAME netproc
                SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_netproc.c ${CMAKE_SOURCE_DIR}/agent/netproc.c)

# One request's params through the agent's parameter parsing, every method (no I/O). The
# libFuzzer binary gets the structure-aware msgpack mutator unless -DSBX_FUZZ_BYTES_ONLY=ON.
set(wire_agent ${CMAKE_SOURCE_DIR}/agent)
sbx_fuzz_target(NAME request
                SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_request.c ${wire_agent}/params.c
                        ${wire_agent}/strv.c ${wire_agent}/glob.c
                LIBS sbxproto PkgConfig::MSGPACK)
if(SBX_FUZZ AND NOT SBX_FUZZ_BYTES_ONLY)
    target_compile_definitions(fuzz_request PRIVATE SBX_FUZZ_STRUCTURED)
endif()

# libsbx's sans-I/O connection core fed agent -> client bytes.
sbx_fuzz_target(NAME sbxconn SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_sbxconn.c LIBS sbxconn)

# Agent headers by -iquote, not -I (INCLUDES): agent/glob.h must not shadow <glob.h>.
foreach(t fuzz_netproc_replay fuzz_netproc fuzz_request_replay fuzz_request)
    if(TARGET ${t})
        target_compile_options(${t} PRIVATE -iquote ${CMAKE_SOURCE_DIR}/agent)
    endif()
endforeach()
