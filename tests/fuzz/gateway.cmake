# The gateway's parsers (gateway/*.c through the sbxgw library): HTTP + WebSocket server, JSON-RPC
# session, create config, REST routes, fetch's HTTP client and host patterns, the ingress, what a
# hostile agent answers a session (agent) and the gateway's own link (link: pid -> port lookups,
# deploy jobs), and expose/ssh's Host header (ssh_host).
# Targets that reach a file's static functions #include that file (its object then comes from the
# target, not from sbxgw); fuzz_gw_uv.h stands in for its socket calls.
set(GW_FUZZ_INC ${CMAKE_SOURCE_DIR}/gateway ${CMAKE_CURRENT_SOURCE_DIR})
# jansson_guard.c: jansson is not instrumented, so its accessors are wrapped to read each value
# in instrumented code first (a freed json_t is then reported).
set(GW_JSON_WRAPPED json_object_get json_object_getn json_object_size json_object_set_new
    json_object_del json_object_iter json_array_size json_array_get json_array_append_new
    json_string_value json_string_length json_integer_value json_real_value json_number_value
    json_dumps)
list(TRANSFORM GW_JSON_WRAPPED PREPEND "-Wl,--wrap=" OUTPUT_VARIABLE GW_JSON_WRAP_FLAGS)
foreach(t http config route httpc ingress jsonrpc agent link ssh_host)
    if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_gw_${t}.c)
        # A second file when the target needs two gateway files' statics (fuzz_gw_httpc_fetch.c).
        file(GLOB extra ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_gw_${t}_*.c)
        sbx_fuzz_target(NAME gw_${t} SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/fuzz_gw_${t}.c ${extra}
                        ${CMAKE_CURRENT_SOURCE_DIR}/jansson_guard.c
                        LIBS sbxgw INCLUDES ${GW_FUZZ_INC})
        foreach(bin fuzz_gw_${t}_replay fuzz_gw_${t})
            if(TARGET ${bin})
                target_link_options(${bin} PRIVATE ${GW_JSON_WRAP_FLAGS})
            endif()
        endforeach()
    endif()
endforeach()
