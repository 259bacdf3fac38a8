# transfer.upload_tree's extraction (agent/untar.c), run for real on a scratch tmpfs inside
# fuzz_sandbox.h's mount namespace. fuzz_untar.c #includes untar.c (its extraction is static) and
# stands in for the connection and stream calls around it; path.c (with strv.c and glob.c, which it
# needs) and user.c are the real ones.
# -iquote as in workload.cmake: agent/glob.h must not shadow <glob.h>.
set(fuzz_untar_agent ${CMAKE_SOURCE_DIR}/agent)
sbx_fuzz_target(NAME untar SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_untar.c
                ${fuzz_untar_agent}/path.c ${fuzz_untar_agent}/user.c
                ${fuzz_untar_agent}/strv.c ${fuzz_untar_agent}/glob.c
                LIBS sbxproto PkgConfig::MSGPACK PkgConfig::LIBARCHIVE PkgConfig::NETTLE
                PkgConfig::LIBUV)
foreach(t fuzz_untar_replay fuzz_untar)
    if(TARGET ${t})
        target_compile_options(${t} PRIVATE -iquote ${fuzz_untar_agent})
    endif()
endforeach()
# libFuzzer's mutations keep the tar headers' checksums right (and now and then set a header
# field to a hostile value) unless -DSBX_FUZZ_BYTES_ONLY=ON.
if(SBX_FUZZ AND NOT SBX_FUZZ_BYTES_ONLY)
    target_compile_definitions(fuzz_untar PRIVATE SBX_FUZZ_STRUCTURED)
endif()
