# sbx-init's parsers (init/): the kernel command line, /etc/sbx/init.conf, the control channel.
set(fuzz_init_dir ${CMAKE_SOURCE_DIR}/init)
# init/config.c's pure parsers (init_log writes to stderr, quiet in the targets); the command line
# target also parses each sbx.listen address (init/listen.c) as sbx-init does when it holds one.
sbx_fuzz_target(NAME init_cmdline SOURCES fuzz_init_cmdline.c ${fuzz_init_dir}/config.c
                ${fuzz_init_dir}/listen.c INCLUDES ${fuzz_init_dir})
sbx_fuzz_target(NAME init_conf SOURCES fuzz_init_conf.c ${fuzz_init_dir}/config.c
                INCLUDES ${fuzz_init_dir})
# init/agent.c reads the channel (main.c's one function it calls is the target's); it links the
# filters and listen addresses it shares with the agent.
sbx_fuzz_target(NAME init_ctl SOURCES fuzz_init_ctl.c ${fuzz_init_dir}/agent.c
                ${fuzz_init_dir}/config.c LIBS sbxguest PkgConfig::SECCOMP
                INCLUDES ${fuzz_init_dir})
