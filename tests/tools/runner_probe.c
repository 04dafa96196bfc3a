/* Probe for tests/unit/test_runner.c: the real test runner (tests/runner.c) linked with tests that
 * pass, fail, skip, crash, hang and exit in the middle, so that the test can check from outside
 * that each is reported by name and that the tests after a crash or a hang still run. */
#include <stdlib.h>
#include <unistd.h>

#include "tests/test.h"

TEST(probe_passes)
{
    CHECK(1 + 1 == 2);
}

TEST(probe_fails)
{
    CHECK_EQ_INT(1 + 1, 3);
}

TEST(probe_skips)
{
    TEST_SKIP("this machine has no such feature");
}

TEST(probe_crashes)
{
    abort(); /* a crash, the same under the sanitizers (they do not catch SIGABRT) */
}

TEST(probe_after_the_crash)
{
    CHECK(1);
}

TEST(probe_hangs)
{
    sleep(600);
}

TEST(probe_after_the_hang)
{
    CHECK(1);
}

TEST(probe_exits)
{
    exit(7);
}

TEST(probe_last)
{
    CHECK(1);
}
