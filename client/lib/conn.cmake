# The sans-I/O connection core of libsbx (include/sbx/conn.h), its unit test, and the libuv
# example that drives many agents from one loop. Included from client/CMakeLists.txt:
#     include(lib/conn.cmake)
#
# The core is a static library of its own, sbxconn, linked against sbxproto and msgpack only:
# no sockets, no libuv, no threads. That keeps the layering visible in the build (nothing
# socket-shaped can creep into the core), lets a gateway link the core without the blocking
# client, and lets sbxclient (the blocking API) link it when it is re-implemented on top.
set(SBX_CONN_LIB_DIR ${CMAKE_CURRENT_LIST_DIR})
get_filename_component(SBX_CONN_CLIENT_DIR ${SBX_CONN_LIB_DIR} DIRECTORY)

add_library(sbxconn STATIC ${SBX_CONN_LIB_DIR}/conn.c ${SBX_CONN_LIB_DIR}/conn_calls.c)
target_include_directories(sbxconn PUBLIC ${SBX_CONN_CLIENT_DIR}/include)
target_link_libraries(sbxconn PUBLIC sbxproto $<$<NOT:$<BOOL:$<TARGET_PROPERTY:SBX_STATIC_DEPS>>>:PkgConfig::MSGPACK>)
set_target_properties(sbxconn PROPERTIES POSITION_INDEPENDENT_CODE ON)

# client/examples/uv_spawn_many: one libuv loop, N agents, proc.spawn of `echo hi` on each.
add_executable(uv_spawn_many ${SBX_CONN_CLIENT_DIR}/examples/uv_spawn_many.c)
target_link_libraries(uv_spawn_many PRIVATE sbxconn PkgConfig::LIBUV)
set_target_properties(uv_spawn_many PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)

if(SBX_TESTS)
    add_executable(test_conn ${SBX_CONN_CLIENT_DIR}/tests/test_conn.c)
    target_link_libraries(test_conn PRIVATE sbxconn PkgConfig::CMOCKA)
    set_target_properties(test_conn PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
    add_test(NAME unit.client.test_conn COMMAND test_conn)
    set_tests_properties(unit.client.test_conn PROPERTIES LABELS "unit;client" TIMEOUT 120)

    # 100 agents (one process each, a unix socket each) started by the driver in a temp dir.
    find_package(Python3 REQUIRED COMPONENTS Interpreter)
    add_test(NAME integration.client.uv_spawn_many
             COMMAND ${Python3_EXECUTABLE} ${SBX_CONN_CLIENT_DIR}/examples/run_uv_spawn_many.py
                     --agent $<TARGET_FILE:sbx-agent> --example $<TARGET_FILE:uv_spawn_many>
                     --agents 100)
    set_tests_properties(integration.client.uv_spawn_many PROPERTIES
        LABELS "client;integration" TIMEOUT 60 ENVIRONMENT "PYTHONDONTWRITEBYTECODE=1")
endif()
