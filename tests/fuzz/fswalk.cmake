# fs.walk (agent/fswalk.c) over a real scratch tree inside fuzz_sandbox.h's mount namespace. The
# target links fswalk.c and what the walk calls (fs.c, params.c, path.c, strv.c, glob.c) as the
# agent links them, and stands in for the connection, the stream and the request's identity.
# -iquote as in workload.cmake: agent/glob.h must not shadow <glob.h>.
set(fuzz_fswalk_agent ${CMAKE_SOURCE_DIR}/agent)
sbx_fuzz_target(NAME fswalk SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_fswalk.c
                ${fuzz_fswalk_agent}/fswalk.c ${fuzz_fswalk_agent}/fs.c
                ${fuzz_fswalk_agent}/params.c ${fuzz_fswalk_agent}/path.c
                ${fuzz_fswalk_agent}/strv.c ${fuzz_fswalk_agent}/glob.c
                LIBS sbxproto PkgConfig::MSGPACK PkgConfig::LIBUV)
foreach(t fuzz_fswalk_replay fuzz_fswalk)
    if(TARGET ${t})
        target_compile_options(${t} PRIVATE -iquote ${fuzz_fswalk_agent})
    endif()
endforeach()
