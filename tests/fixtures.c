/* The golden tests' fixture readers (tests/test.h): JSON files and their arrays of token ids. In
 * the test binary, not the runner, so the runner links without cJSON. */
#include <cJSON.h>
#include <stdlib.h>

#include "test.h"

cJSON *test_read_json(const char *path)
{
    char *s = test_read_file(path, NULL);
    cJSON *j = s ? cJSON_Parse(s) : NULL;
    free(s);
    return j;
}

int test_json_ids(const cJSON *arr, int32_t *out, int cap)
{
    if (!cJSON_IsArray(arr))
        return -1;
    int n = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        double v = cJSON_GetNumberValue(it);
        if (n >= cap || !cJSON_IsNumber(it) || v != (double)(int32_t)v)
            return -1;
        out[n++] = (int32_t)v;
    }
    return n;
}
