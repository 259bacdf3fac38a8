# The gateway's parsers (gateway/*.c through the sbxgw library): HTTP + WebSocket server, JSON-RPC
# session, create config, REST routes, fetch's HTTP client and host patterns, the ingress, what a
# hostile agent answers a session (agent) and the gateway's own link (link: pid -> port lookups,
# deploy jobs), and expose/ssh's Host header (ssh_host).
# Targets that reach a file's static functions #include that file (its object then comes from the
# target, not from sbxgw); fuzz_gw_uv.h stands in for its socket calls.
set(GW_FUZZ_INC ${CMAKE_SOURCE_DIR}/gateway ${CMAKE_CURRENT_SOURCE_DIR})
foreach(t http config route httpc ingress jsonrpc agent link ssh_host)
    if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_gw_${t}.c)
        # A second file when the target needs two gateway files' statics (fuzz_gw_httpc_fetch.c).
        file(GLOB extra ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_gw_${t}_*.c)
        sbx_fuzz_target(NAME gw_${t} SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_gw_${t}.c ${extra}
                        LIBS sbxgw INCLUDES ${GW_FUZZ_INC})
    endif()
endforeach()
