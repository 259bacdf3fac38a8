# The agent's parsers of workload-controlled data (agent/): upload_tree's tar entry checks,
# pack's ignore rules, fs.glob / fs.walk patterns, the safe-path family. Each target compiles the
# agent files it needs, as tests/unit does (-iquote: agent/glob.h must not shadow <glob.h>).
set(fuzz_agent_dir ${CMAKE_SOURCE_DIR}/agent)

function(sbx_fuzz_workload name)
    sbx_fuzz_target(NAME ${name} ${ARGN})
    foreach(t fuzz_${name}_replay fuzz_${name})
        if(TARGET ${t})
            target_compile_options(${t} PRIVATE -iquote ${fuzz_agent_dir})
            target_include_directories(${t} PRIVATE ${LIBUV_INCLUDE_DIRS})
        endif()
    endforeach()
endfunction()

sbx_fuzz_workload(glob SOURCES fuzz_glob.c ${fuzz_agent_dir}/glob.c ${fuzz_agent_dir}/strv.c
                  LIBS sbxproto PkgConfig::MSGPACK)
sbx_fuzz_workload(walk_pattern SOURCES fuzz_walk_pattern.c ${fuzz_agent_dir}/glob.c
                  ${fuzz_agent_dir}/strv.c LIBS sbxproto PkgConfig::MSGPACK)
sbx_fuzz_workload(ignore_rules SOURCES fuzz_ignore_rules.c ${fuzz_agent_dir}/glob.c
                  ${fuzz_agent_dir}/strv.c LIBS sbxproto PkgConfig::MSGPACK)
# path.c's one tie to the rest of the agent, agent_fs_err (fs.c), is the target's own.
sbx_fuzz_workload(tar_entry SOURCES fuzz_tar_entry.c ${fuzz_agent_dir}/path.c
                  ${fuzz_agent_dir}/strv.c ${fuzz_agent_dir}/glob.c
                  LIBS sbxproto PkgConfig::MSGPACK PkgConfig::LIBARCHIVE)
# Its scratch trees (read-only, and writable twins for create mode) are made in the private tmpfs
# of fuzz_sandbox.h and removed per input.
sbx_fuzz_workload(safe_path SOURCES fuzz_safe_path.c ${fuzz_agent_dir}/path.c
                  ${fuzz_agent_dir}/strv.c ${fuzz_agent_dir}/glob.c
                  LIBS sbxproto PkgConfig::MSGPACK)
